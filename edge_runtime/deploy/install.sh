#!/bin/sh
# Installs this device bundle (edge-runtime bundle) with no network access:
#   sudo ./install.sh                 the runtime in /opt/amstream, its config in /etc/amstream,
#                                     its state in /var/lib/amstream, a system user and the
#                                     amstream-edge service, enabled and started
#   ./install.sh --root DIR           the same tree under DIR, no user and no service (staging,
#                                     tests, an image being built)
# Options: --python PY (default python3; it must be the version the bundle was built for),
#          --no-start (install and enable the service, do not start it).
set -eu
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

echo "installing $AMS_DEVICE_ID: runtime in $prefix, config in $conf, state in $state"
mkdir -p "$prefix" "$conf" "$state"
site=""
[ "$AMS_SYSTEM_SITE_PACKAGES" = 1 ] && site="--system-site-packages"  # picamera2 from apt
# A venv cannot move: each install builds its own and then points venv at it in one rename, so
# a failed install leaves the device running what it had.
venv="venv-$(date +%Y%m%d%H%M%S)-$$"  # unique, even twice in a second
rm -rf "$prefix/$venv"
"$python" -m venv $site "$prefix/$venv"
wheel="$(ls "$here"/wheels/amstream-*.whl)"
added=""
for name in $AMS_ADDED_WHEELS; do added="$added $here/wheels/$name"; done
# shellcheck disable=SC2086 # one word per added wheel
"$prefix/$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
  --find-links "$here/wheels" "$wheel[$AMS_EXTRAS]" $added
ln -sfn "$venv" "$prefix/venv.link" && mv -T "$prefix/venv.link" "$prefix/venv"
for old in "$prefix"/venv-*; do
  [ "$old" = "$prefix/$venv" ] || rm -rf "$old"
done

for file in "$here"/config/*; do
  name="$(basename "$file")"
  [ "$name" = profile.toml ] && continue
  cp -p "$file" "$conf/$name"
done
sed "s#@STATE_DIR@#$state#g" "$here/config/profile.toml" > "$conf/profile.toml"
mkdir -p "$root/etc/systemd/system"
sed -e "s#@PREFIX@#$prefix#g" -e "s#@CONFIG_DIR@#$conf#g" \
  "$here/amstream-edge.service" > "$root/etc/systemd/system/amstream-edge.service"

"$prefix/venv/bin/edge-runtime" check-profile --files "$conf/profile.toml" >/dev/null

if [ "$service" = 1 ]; then
  getent group amstream >/dev/null || groupadd --system amstream
  id amstream >/dev/null 2>&1 || useradd --system --gid amstream --home-dir "$state" \
    --shell /usr/sbin/nologin amstream
  # the camera (video) and the Coral USB accelerator (plugdev, by libedgetpu's udev rule)
  for group in video plugdev; do
    getent group "$group" >/dev/null && usermod -a -G "$group" amstream
  done
  chown -R root:amstream "$conf" && chmod 0750 "$conf" && chmod 0640 "$conf"/*
  chown -R amstream:amstream "$state"
  systemctl daemon-reload
  systemctl enable amstream-edge.service
  [ "$start" = 1 ] && systemctl restart amstream-edge.service
  echo "installed: systemctl status amstream-edge; journalctl -u amstream-edge -f"
else
  echo "installed: $prefix/venv/bin/edge-runtime run --profile $conf/profile.toml"
fi
