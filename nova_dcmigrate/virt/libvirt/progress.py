"""Live progress of a redirected live migration, for its redirect record.

Only numbers something measured are reported; what no part measures is
None (the record shows null):

``bytes_from_source``
    agents: what the source agent put on its link for the current attempt
    (``bytes_sent`` after dropping held pages, else ``stream_bytes``);
    direct: the libvirt job's ``memory_processed`` as Nova's monitor last
    saved it in the migration record (``memory_processed_bytes``, every
    ``[libvirt] live_migration_monitor_interval`` seconds).
``bytes_relayed``
    agents: per holder, the relay bytes the new destination received in
    the current attempt; direct: ``{}`` (nothing is relayed).
``pages_deduplicated``
    agents: pages the source agent dropped because the new destination
    gets them from a holder (``pages_dropped``); direct: 0.
``remaining_bytes``
    libvirt's ``memory_remaining`` as Nova last saved it
    (``memory_remaining_bytes``); None until saved. With the agents this is
    what the source QEMU still has to hand to its agent, so an upper bound
    of what crosses the link.
``estimated_completion``
    agents only: now + remaining_bytes / (source rate + relay rate into the
    new destination, both measured by its agent over the last second);
    None when either is unknown or the rate is 0.
"""

from __future__ import annotations

import datetime
from typing import Any

from nova_dcmigrate.compute import records
from nova_dcmigrate.virt import attempts
from nova_dcmigrate.virt.libvirt import transport


def _field(obj: Any, name: str) -> Any:
    try:
        if not obj.obj_attr_is_set(name):
            return None
    except AttributeError:
        pass
    return getattr(obj, name, None)


def redirect_progress(driver: Any, instance_uuid: str
                      ) -> dict[str, Any] | None:
    """Progress of the instance's current attempt, or None if no run."""
    run = driver.dcmigrate_runs.get(instance_uuid)
    if run is None:
        return None
    remaining = _field(run.migration, "memory_remaining_bytes")
    agent_transport = driver.dcmigrate_transport
    if not isinstance(agent_transport, transport.AgentTransport):
        return {"bytes_from_source": _field(run.migration,
                                            "memory_processed_bytes"),
                "bytes_relayed": {}, "pages_deduplicated": 0,
                "remaining_bytes": remaining,
                "estimated_completion": None}
    mig = agent_transport.migrations.get(instance_uuid)
    if mig is None or not mig.attempts:
        return None
    attempt = mig.attempts[-1]
    agents = agent_transport.agents
    from_source = dedup = None
    try:
        src = agents.get_status(mig.source, mig.migration_id)
    except Exception:  # noqa: BLE001 - unknown, reported as null
        src = None
    if src is not None:
        for entry in attempts.attempt_entries(src, attempt.number):
            c = entry.get("counters") or {}
            from_source = int(c.get("bytes_sent", c.get("stream_bytes", 0)))
            dedup = int(c.get("pages_dropped", 0))
    relayed: dict[str, int] | None = None
    rate = 0.0
    try:
        dst = agents.get_status(attempt.dest.host, mig.migration_id)
    except Exception:  # noqa: BLE001 - unknown, reported as null
        dst = None
    if dst is not None:
        relayed = {}
        for entry in attempts.attempt_entries(dst, attempt.number):
            red = entry.get("redirect") or {}
            for host, h in (red.get("holders") or {}).items():
                relayed[host] = int(h.get("bytes", 0))
            rate = (float(red.get("source_rate") or 0.0) +
                    float(red.get("relay_rate") or 0.0))
    eta = None
    if remaining is not None and rate > 0:
        eta = records.isotime(records.utcnow() + datetime.timedelta(
            seconds=int(remaining) / rate))
    return {"bytes_from_source": from_source, "bytes_relayed": relayed,
            "pages_deduplicated": dedup, "remaining_bytes": remaining,
            "estimated_completion": eta}
