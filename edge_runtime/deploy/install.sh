#!/bin/sh
# Installs this device bundle (edge-runtime bundle) with no network access:
#   sudo ./install.sh                 the runtime in /opt/amstream, its config in /etc/amstream,
#                                     its state in /var/lib/amstream, a system user and the
#                                     amstream-edge service, enabled and started
#   ./install.sh --root DIR           the same tree under DIR and for DIR (its paths name DIR),
#                                     no user and no service: a trial install, the tests
# Options: --python PY (default python3; it must be the version the bundle was built for),
#          --no-start (install and enable the service, do not start it).
# What the profile reads as ${VAR} goes in /etc/amstream/env (NAME=value lines), which the
# service reads and the check below too.
set -eu
umask 022  # the service's user runs the venv; the config is made private below
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/bundle.env"

root="" python="python3" start=1
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --no-start) start=0; shift ;;
    *) echo "error: install.sh: unknown option $1 (see the comment at its top)" >&2; exit 2 ;;
  esac
done

prefix="$root/opt/amstream" conf="$root/etc/amstream" state="$root/var/lib/amstream"
service=0
if [ -z "$root" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: install.sh: run it as root (sudo), or give --root DIR to install under DIR" >&2
    exit 2
  fi
  command -v systemctl >/dev/null 2>&1 && service=1
fi

have="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
if [ "$have" != "$AMS_PYTHON_VERSION" ]; then
  echo "error: install.sh: $python is Python ${have:-missing}; the bundle's wheels are for" \
    "$AMS_PYTHON_VERSION: give --python python$AMS_PYTHON_VERSION, or build the bundle with" \
    "edge-runtime bundle --python-version $have" >&2
  exit 2
fi

# sed replacement text: a path as it is, whatever it holds
literal() { printf '%s' "$1" | sed -e 's/[\\&#]/\\&/g'; }

echo "installing $AMS_DEVICE_ID: runtime in $prefix, config in $conf, state in $state"
mkdir -p "$prefix" "$conf" "$state"

# 1. A new venv beside the running one (a venv cannot move, so each install has its own).
venv="venv-$(date +%Y%m%d%H%M%S)-$$"  # unique, even twice in a second
site=""
[ "$AMS_SYSTEM_SITE_PACKAGES" = 1 ] && site="--system-site-packages"  # picamera2 from apt
"$python" -m venv $site "$prefix/$venv"
set -- "$(ls "$here"/wheels/amstream-*.whl)[$AMS_EXTRAS]"
for name in $AMS_ADDED_WHEELS; do set -- "$@" "$here/wheels/$name"; done
"$prefix/$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
  --find-links "$here/wheels" "$@"

# 2. The config, staged and checked by the new runtime before anything running changes.
staged="$conf.new"
rm -rf "$staged"
(
  umask 077  # the device's password and its profile: its owner's alone from the first byte
  mkdir -p "$staged"
  cp "$here"/config/* "$staged/"
  sed "s#@STATE_DIR@#$(literal "$state")#g" "$here/config/profile.toml" > "$staged/profile.toml"
  if [ -f "$conf/env" ]; then cp -p "$conf/env" "$staged/env"; fi
)
if ! (
  if [ -f "$staged/env" ]; then set -a && . "$staged/env" && set +a; fi
  "$prefix/$venv/bin/edge-runtime" check-profile --files "$staged/profile.toml" >/dev/null
); then
  rm -rf "$prefix/$venv" "$staged"
  echo "error: install.sh: the profile does not check (above); nothing was changed" >&2
  exit 1
fi

# 3. Swap both in: one rename each. The previous venv stays (a running service uses it until
#    its restart); older ones go.
previous="$(readlink "$prefix/venv" 2>/dev/null || true)"
for file in "$staged"/*; do mv -f "$file" "$conf/"; done
rmdir "$staged"
ln -sfn "$venv" "$prefix/venv.link" && mv -T "$prefix/venv.link" "$prefix/venv"
for old in "$prefix"/venv-*; do
  case "$(basename "$old")" in "$venv" | "$previous") ;; *) rm -rf "$old" ;; esac
done
mkdir -p "$root/etc/systemd/system"
sed -e "s#@PREFIX@#$(literal "$prefix")#g" -e "s#@CONFIG_DIR@#$(literal "$conf")#g" \
  "$here/amstream-edge.service" > "$root/etc/systemd/system/amstream-edge.service"
chmod 644 "$root/etc/systemd/system/amstream-edge.service"

if [ "$service" = 1 ]; then
  getent group amstream >/dev/null || groupadd --system amstream
  id amstream >/dev/null 2>&1 || useradd --system --gid amstream --home-dir "$state" \
    --shell /usr/sbin/nologin amstream
  # the camera (video) and the Coral USB accelerator (plugdev, by libedgetpu's udev rule)
  for group in video plugdev; do
    if getent group "$group" >/dev/null; then usermod -a -G "$group" amstream; fi
  done
  chown -R root:amstream "$conf" && chmod 0750 "$conf" && chmod 0640 "$conf"/*
  chown -R amstream:amstream "$state"
  systemctl daemon-reload
  systemctl enable amstream-edge.service
  if [ "$start" = 1 ]; then systemctl restart amstream-edge.service; fi
  echo "installed: systemctl status amstream-edge; journalctl -u amstream-edge -f"
else
  echo "installed: $prefix/venv/bin/edge-runtime run --profile $conf/profile.toml"
fi
