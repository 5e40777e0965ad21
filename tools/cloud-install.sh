#!/bin/bash
# Install nova-dcmigrate into the lab cloud's venv the way the devstack
# plugin does on a real host: a wheel built from a clone of this tree
# (install_dcmigrate in devstack/lib/dcmigrate, run with the lab's
# stand-ins for devstack's helpers).  Usage: cloud-install.sh <venv>
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
VENV=$(cd "$1" && pwd)
WORK=$(mktemp -d /tmp/dcm-cloud-install.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# A clone of the committed tree plus the uncommitted changes (pbr writes
# build files into the tree it builds from, and needs git metadata).
git clone -q "$HERE" "$WORK/src"
(cd "$HERE" && git diff HEAD --binary) | (cd "$WORK/src" && git apply --allow-empty -q -)
(cd "$HERE" && git ls-files --others --exclude-standard -z) | \
    (cd "$HERE" && xargs -0 -r cp --parents -t "$WORK/src")
export CLOUD_VENV="$VENV"
export CLOUD_CONSTRAINTS="$HERE/constraints.txt $HERE/nova-constraints.txt $HERE/cloud-constraints.txt"
export DEST="$WORK"
export DATA_DIR="$WORK/data"
export DCMIGRATE_DIR="$WORK/src"
export DCMIGRATE_WHEEL_DIR="$WORK/wheels"
# python3 in install_dcmigrate is the venv's (as devstack's global pip).
export PATH="$VENV/bin:$PATH"
source "$HERE/nova_dcmigrate/lab/cloud/devstack-shim.sh"
function enable_service { :; }
source "$HERE/devstack/settings"
source "$HERE/devstack/lib/dcmigrate"
"$VENV/bin/python" -m pip uninstall -q -y nova-dcmigrate 2>/dev/null || true
install_dcmigrate
# The lab tools themselves (dcmigrate-lab: pyroute2, QMP...), which a
# compute host does not need.
pip_install "$(ls "$DCMIGRATE_WHEEL_DIR"/nova_dcmigrate-*.whl)[lab]"
"$VENV/bin/python" -c 'import nova.virt.dcmigrate, nova_dcmigrate_tempest_plugin.plugin' 
echo "installed $(ls "$DCMIGRATE_WHEEL_DIR")"
