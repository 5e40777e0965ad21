#!/bin/bash
# Install the Debian packages nova-dcmigrate needs (idempotent, run as root).
#
# QEMU >= 9 is required: QEMU 7.2 (Debian 12's default) corrupts guest RAM when
# migrating a busy TCG guest (see doc/ and shared testbed notes).  On Debian 12
# QEMU and libvirt come from the backports suite, which is added on the mirror
# already configured in the machine's apt sources; on Debian 13+ from main.
set -euo pipefail

STAMP=/var/lib/nova-dcmigrate/system-deps.stamp
QEMU_MIN_MAJOR=9
HERE="$(cd "$(dirname "$0")" && pwd)"
BINDEP="$HERE/../bindep.txt"

log() { echo "[install-system-deps] $*"; }

qemu_major() {
    local v
    v=$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)
    echo "${v:-0}"
}

# Packages: the bindep.txt lines without a profile, plus those of the 'lab' profile.
packages() {
    sed -e 's/#.*//' "$BINDEP" | awk 'NF {print $1}'
}

if [ -f "$STAMP" ] && [ "$(qemu_major)" -ge "$QEMU_MIN_MAJOR" ] \
        && command -v libvirtd >/dev/null && command -v rabbitmq-server >/dev/null; then
    all_ok=1
    for p in $(packages); do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || all_ok=0
    done
    if [ "$all_ok" = 1 ]; then
        log "system packages already installed (QEMU $(qemu_major))"
        exit 0
    fi
fi

if [ "$(id -u)" != 0 ]; then
    echo "install-system-deps: must run as root (apt-get install)" >&2
    exit 1
fi

. /etc/os-release
codename="${VERSION_CODENAME:-}"
export DEBIAN_FRONTEND=noninteractive

# The mirror serving the main suite, read from the existing apt sources
# (deb822 .sources files or one-line .list files).
find_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk -v s="$codename" '
            /^URIs:/ {u=$2}
            /^Suites:/ {for (i=2;i<=NF;i++) if ($i==s) found=u}
            /^$/ {u=""}
            END {print found}' "$f")
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk -v s="$codename" '$1=="deb" {for (i=2;i<=NF;i++) if ($i !~ /^\[/ && $i ~ /:\/\//) {if ($(i+1)==s) print $i; break}}' "$f" | head -1)
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
}

target=()
if [ "$codename" = "bookworm" ]; then
    bpo=/etc/apt/sources.list.d/nova-dcmigrate-backports.sources
    if [ ! -f "$bpo" ]; then
        mirror=$(find_mirror)
        if [ -z "$mirror" ]; then
            echo "install-system-deps: no apt source for suite '$codename' found;" \
                 "cannot add $codename-backports for QEMU >= $QEMU_MIN_MAJOR" >&2
            exit 1
        fi
        log "adding $codename-backports on the configured mirror"
        cat > "$bpo" <<SRC
Types: deb
URIs: $mirror
Suites: $codename-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    target=(-t "$codename-backports")
fi

log "apt-get update"
apt-get update -qq
# qemu/libvirt from backports on Debian 12; everything else from the release.
virt_pkgs="qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev"
log "installing virtualisation packages ${target[*]:-}"
apt-get install -y -q --no-install-recommends "${target[@]}" $virt_pkgs
log "installing other packages"
apt-get install -y -q --no-install-recommends $(packages)

if [ "$(qemu_major)" -lt "$QEMU_MIN_MAJOR" ]; then
    echo "install-system-deps: QEMU >= $QEMU_MIN_MAJOR is required but only" \
         "$(qemu-system-x86_64 --version | head -1) could be installed." \
         "QEMU < 9 corrupts guest memory when migrating busy TCG guests." >&2
    exit 1
fi
mkdir -p "$(dirname "$STAMP")"
date > "$STAMP"
log "done: $(qemu-system-x86_64 --version | head -1); libvirt $(libvirtd --version | awk '{print $NF}')"
