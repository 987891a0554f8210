#!/usr/bin/env bash
# Prints a Python 3.11 interpreter: $PYTHON if set and suitable, else python3.11, else python3.
for candidate in "${PYTHON:-}" python3.11 python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "$candidate"
    exit 0
  fi
done
echo "error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
exit 1
