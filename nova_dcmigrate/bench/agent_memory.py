"""Peak memory of every lab agent during one benchmark run.

Why: an agent must cost a destination no second copy of guest RAM.  Each
run resets the agents' peak RSS before the migration starts and reads it
when the migration ended, before the agents drop the migration: the
record's ``agent_memory`` has, per agent host, the peak RSS and its
growth over the start, PSS and shared memory, and the guest RAM the agent
holds open (``held_backing_bytes``: a holder keeps its dead QEMU's RAM
until the migration is cleaned up) or copied (``copied_bytes``).
"""

from __future__ import annotations

from typing import Any

from oslo_log import log as logging

from nova_dcmigrate.lab import proc_memory

LOG = logging.getLogger(__name__)


class AgentMemoryProbe:
    """:param agents: a :class:`~nova_dcmigrate.lab.agents.LabAgents`."""

    def __init__(self, agents: Any) -> None:
        self.agents = agents
        self.before: dict[str, proc_memory.ProcMemory] = {}

    def _pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.agents.procs.items()
                if proc.poll() is None}

    def start(self) -> None:
        self.before = {}
        for name, pid in self._pids().items():
            try:
                proc_memory.reset_peak(pid)
                self.before[name] = proc_memory.read(pid)
            except OSError as err:
                LOG.debug("agent %s: no memory reading: %s", name, err)

    def _held(self, name: str) -> dict[str, int]:
        """Guest RAM the agent holds open or copied, all migrations."""
        out = {"backing_bytes": 0, "copied_bytes": 0}
        api = self.agents.api
        try:
            for mid in api.list_migrations(name):
                store = api.get_status(name, mid).get("store") or {}
                for key in out:
                    out[key] += int(store.get(key, 0) or 0)
        except Exception as err:  # noqa: BLE001 - diagnostics only
            LOG.debug("agent %s: no store status: %s", name, err)
        return out

    def finish(self) -> dict[str, Any]:
        """Per agent host: :func:`proc_memory.report`."""
        out: dict[str, Any] = {}
        for name, pid in self._pids().items():
            before = self.before.get(name)
            if before is None:
                continue
            try:
                after = proc_memory.read(pid)
            except OSError:
                continue
            out[name] = proc_memory.report(before, after, self._held(name))
        return out
