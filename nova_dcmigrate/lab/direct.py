"""Plain QEMU-to-QEMU live migration across the lab network.

This is the reference path: what a migration costs without DCmigrate (no
agents, no relay), over the same shaped links.  It follows what libvirt
does for a direct precopy migration: the destination starts with
``-incoming defer``, gets its capabilities, then listens on its own
address; the source enables return-path and migrates with unlimited
``max-bandwidth`` so the link, not QEMU's default cap, is the limit.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from oslo_log import log as logging

from nova_dcmigrate.lab import exception
from nova_dcmigrate.lab.qemu import MigrationResult
from nova_dcmigrate.lab.qemu import QemuGuest
from nova_dcmigrate.lab.topology import Lab

LOG = logging.getLogger(__name__)

#: "Unlimited" max-bandwidth in bytes/s, as libvirt sets it by default.
UNLIMITED_BANDWIDTH = 100 * 1024 ** 3
#: Capabilities that must be set on both ends when enabled.
_BOTH_ENDS = frozenset({"switchover-ack", "multifd", "postcopy-ram",
                        "x-ignore-shared", "mapped-ram"})


def migrate_direct(lab: Lab, src_guest: QemuGuest, dst_host: str, *,
                   capabilities: Mapping[str, bool] | None = None,
                   parameters: Mapping[str, Any] | None = None,
                   timeout: float = 600.0, name: str | None = None,
                   port: int | None = None,
                   ) -> tuple[QemuGuest, MigrationResult]:
    """Live-migrate ``src_guest`` to a new QEMU on ``dst_host``.

    :param capabilities: migration capabilities (``_`` or ``-`` in names);
        return-path is on unless disabled here.
    :param parameters: migration parameters for the source, e.g.
        ``{"downtime_limit": 300}``; ``max_bandwidth`` defaults to
        unlimited.
    :param timeout: seconds to wait for completion; on timeout the
        migration is cancelled.
    :returns: the destination guest, stopped (``paused``) with the
        migrated state, and the source's migration result.  The source
        stays in ``postmigrate``; nothing is resumed.
    :raises MigrationFailed: if QEMU reports failure (the destination is
        stopped again).
    :raises MigrationTimeout: after cancelling a migration that did not
        finish in time.
    """
    caps = {key.replace("_", "-"): bool(value)
            for key, value in (capabilities or {}).items()}
    params = {"max-bandwidth": UNLIMITED_BANDWIDTH,
              **{key.replace("_", "-"): value
                 for key, value in (parameters or {}).items()}}
    # Capabilities persist in QEMU (a guest that once was a switchover-ack
    # destination keeps it), so mirror what the source really has.
    src_guest.set_migration_caps(**caps)
    src_caps = src_guest.migration_caps()
    dst = QemuGuest.start(
        lab, dst_host, src_guest.image, memory_mib=src_guest.memory_mib,
        dirty_mib=src_guest.dirty_mib, dirty_rate=src_guest.dirty_rate,
        incoming="defer", name=name)
    try:
        dst_caps = {cap: True for cap in _BOTH_ENDS if src_caps.get(cap)}
        if dst_caps:
            dst.set_migration_caps(**dst_caps)
        port = port or lab.free_port(dst_host)
        uri = f"tcp:{lab.hosts[dst_host].address}:{port}"
        dst.migrate_incoming(uri)

        src_guest.set_migration_params(**params)
        enabled = sorted(cap for cap, state in src_caps.items() if state)
        LOG.info("Direct migration %s (%s) -> %s (%s) via %s, caps %s, "
                 "params %s", src_guest.name, src_guest.host, dst.name,
                 dst_host, uri, ",".join(enabled), params)
        src_guest.migrate(uri)
        try:
            result = src_guest.wait_migration(timeout)
        except Exception:
            try:
                if src_guest.query_migrate().get("status") not in (
                        "completed", "failed", "cancelled"):
                    LOG.warning("Cancelling migration of %s",
                                src_guest.name)
                    src_guest.migrate_cancel()
                    _wait_cancelled(src_guest)
            except exception.LabError as err:
                LOG.warning("Could not cancel migration of %s: %s",
                            src_guest.name, err)
            raise
        # The source may report completion before the destination has
        # loaded the last device state.
        dst.wait_status({"paused", "postmigrate"}, timeout=60)
    except BaseException:
        dst.stop()
        raise
    return dst, result


def _wait_cancelled(guest: QemuGuest, timeout: float = 10.0) -> None:
    # Stopping the destination while the source is still "cancelling"
    # would turn the cancel into a "failed" migration.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if guest.query_migrate().get("status") in ("cancelled", "failed",
                                                   "completed"):
            return
        time.sleep(0.1)
