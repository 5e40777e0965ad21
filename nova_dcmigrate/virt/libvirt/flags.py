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


def unsupported(flags: int, lv: Any) -> list[str]:
    """Names of the flags in ``flags`` the agents cannot carry.

    :param lv: the libvirt module whose constants ``flags`` uses; a flag
        it does not define is never set.
    """
    return [name for name in UNSUPPORTED_FLAGS
            if getattr(lv, name, 0) and flags & getattr(lv, name)]


def describe(names: list[str]) -> str:
    """``"NAME (why), ..."`` for an error message."""
    return ", ".join("%s (%s)" % (n, UNSUPPORTED_FLAGS[n]) for n in names)
