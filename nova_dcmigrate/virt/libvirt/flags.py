"""Migration flags the dcmigrate agents cannot carry.

Shared by the libvirt-level controller (real ``libvirt``) and the Nova
driver's agent transport (whatever module Nova's driver uses: fakelibvirt
under Nova's functional tests, where ``libvirt`` is not installed).  Hence
no libvirt import here: the caller passes its module.
"""

from __future__ import annotations

from typing import Any

#: Flags whose stream the agents cannot carry, with the reason.
UNSUPPORTED_FLAGS = {
    "VIR_MIGRATE_PARALLEL": "multifd opens extra connections the agents "
                            "cannot see",
    "VIR_MIGRATE_POSTCOPY": "post-copy pages cannot be redirected",
    "VIR_MIGRATE_COMPRESSED": "compressed (XBZRLE) pages are deltas "
                              "against the destination's memory",
    "VIR_MIGRATE_TUNNELLED": "a tunnelled stream does not reach the agents",
    "VIR_MIGRATE_TLS": "a TLS stream cannot be parsed by the agents",
}


#: Flags the agents carry, but not together with VIR_MIGRATE_TLS: a block
#: migration's disks go in libvirt's NBD stream straight to the
#: destination (``disks_uri = tcp://<destination>``), not through the
#: agents, so the agents' TLS would not cover them and dropping QEMU's
#: TLS (the agents must parse the memory stream) would send the disks in
#: clear.
UNSUPPORTED_WITH_TLS = {
    "VIR_MIGRATE_NON_SHARED_DISK": "a block migration's disks bypass the "
                                   "agents and would cross in clear",
    "VIR_MIGRATE_NON_SHARED_INC": "a block migration's disks bypass the "
                                  "agents and would cross in clear",
}


def unsupported_with_tls(flags: int, lv: Any) -> list[str]:
    """Names of the flags in ``flags`` refused because TLS is asked for
    too (``flags`` still holding VIR_MIGRATE_TLS)."""
    tls = getattr(lv, "VIR_MIGRATE_TLS", 0)
    if not tls or not flags & tls:
        return []
    return [name for name in UNSUPPORTED_WITH_TLS
            if getattr(lv, name, 0) and flags & getattr(lv, name)]


def is_block_migration(flags: int, lv: Any) -> bool:
    """Whether ``flags`` copy non-shared disks (libvirt's NBD stream)."""
    return any(getattr(lv, n, 0) and flags & getattr(lv, n)
               for n in UNSUPPORTED_WITH_TLS)


def unsupported(flags: int, lv: Any) -> list[str]:
    """Names of the flags in ``flags`` the agents cannot carry.

    :param lv: the libvirt module whose constants ``flags`` uses; a flag
        it does not define is never set.
    """
    return [name for name in UNSUPPORTED_FLAGS
            if getattr(lv, name, 0) and flags & getattr(lv, name)]


def describe(names: list[str]) -> str:
    """``"NAME (why), ..."`` for an error message."""
    why = {**UNSUPPORTED_FLAGS,
           **{n: "with VIR_MIGRATE_TLS: " + r
              for n, r in UNSUPPORTED_WITH_TLS.items()}}
    return ", ".join("%s (%s)" % (n, why[n]) for n in names)
