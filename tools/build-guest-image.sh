#!/bin/bash
# Build (or find in the cache) the lab guest: Debian kernel + busybox
# initramfs with the memory dirtier.  Prints kernel=<path> and initrd=<path>.
# Needs root for the default cache (/var/cache/nova-dcmigrate); set
# DCMIGRATE_CACHE_DIR to cache elsewhere.  Extra arguments (e.g. --debug)
# go to 'dcmigrate-lab'.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
    py="$ROOT/.venv/bin/python"
else
    py=python3
fi

cd "$ROOT"
exec env PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
    "$py" -m nova_dcmigrate.cmd.lab "$@" build-image
