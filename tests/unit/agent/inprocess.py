"""Real AgentManagers reached in-process instead of over RPC.

Shared by the AgentTransport tests without Nova
(``tests/unit/virt/test_agent_transport.py``) and on Nova's harness
(``tests/functional/nova``): both start real agents on 127.0.0.1 and call
them through :class:`InProcessAgents`, which has ``AgentAPI``'s method
signatures, instead of an oslo.messaging client.
"""

from __future__ import annotations

from typing import Any
from typing import cast

from oslo_config import cfg

from nova_dcmigrate.agent.manager import AgentManager
from tests.unit.agent.harness import make_conf

#: Where every in-process agent listens.
ADDRESS = "127.0.0.1"


def start_agent(host: str, conf: cfg.ConfigOpts,
                **agent_conf: Any) -> AgentManager:
    """Start ``host``'s agent (peer listener on :data:`ADDRESS`, its own
    socket_dir) and map ``host`` to :data:`ADDRESS` in ``conf``'s
    ``[dcmigrate_compute] agent_addresses`` (test host names do not
    resolve). The caller stops it."""
    manager = AgentManager(make_conf(**agent_conf).dcmigrate_agent, host)
    manager.start()
    addresses = dict(conf.dcmigrate_compute.agent_addresses)
    addresses[host] = ADDRESS
    conf.set_override("agent_addresses", addresses,
                      group="dcmigrate_compute")
    return manager


class InProcessAgents:
    """``AgentAPI`` look-alike calling each host's AgentManager directly.

    A host missing from ``managers`` has no agent that answers: every call
    to it raises, as an RPC call to an absent agent times out.

    The in-process "hosts" share one filesystem, so each agent has its own
    socket_dir (one path would name one socket); in a deployment the
    path is the same on both hosts, so the source's answer carries the
    destination's path here (the only thing this adapter changes), unless
    ``same_path`` is False. ``attempt_abort`` False plays agents before
    RPC 1.4 (``abort`` ends every session of a migration), and
    ``relay_wait`` False agents before 1.5 (no ``wait_relayed``).
    """

    def __init__(self, managers: dict[str, AgentManager],
                 same_path: bool = True,
                 attempt_abort: bool = True,
                 relay_wait: bool = True) -> None:
        self.managers = managers
        self.same_path = same_path
        self.attempt_abort = attempt_abort
        self.relay_wait = relay_wait
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        #: The ``timeout`` of every ping, in order.
        self.ping_timeouts: list[float | None] = []
        self._dest_socket: dict[tuple[str, int], str] = {}

    def _call(self, host: str, method: str, **kwargs: Any) -> Any:
        """Call ``method`` of ``host``'s manager, as its RPC endpoint."""
        self.calls.append((host, method, kwargs))
        if host not in self.managers:
            raise RuntimeError("no agent on host %s" % host)
        return getattr(self.managers[host], method)({}, **kwargs)

    def ping(self, host: str,
             timeout: float | None = None) -> dict[str, Any]:
        self.ping_timeouts.append(timeout)
        return cast(dict[str, Any], self._call(host, "ping"))

    def prepare_destination(self, host: str, migration_id: str, secret: str,
                            attempt: int = 0,
                            holders: list[dict[str, Any]] | None = None,
                            split: bool = True,
                            source_rate: float | None = None,
                            tls: bool = False,
                            guest_memory: int | None = None
                            ) -> dict[str, Any]:
        result = self._call(host, "prepare_destination",
                            migration_id=migration_id, secret=secret,
                            attempt=attempt, holders=holders, split=split,
                            source_rate=source_rate, tls=tls,
                            guest_memory=guest_memory)
        self._dest_socket[(migration_id, attempt)] = result["socket"]
        return cast(dict[str, Any], result)

    def prepare_source(self, host: str, migration_id: str, secret: str,
                       dest_address: str, dest_port: int,
                       attempt: int = 0, tls: bool = False
                       ) -> dict[str, Any]:
        result = self._call(host, "prepare_source",
                            migration_id=migration_id, secret=secret,
                            dest_address=dest_address, dest_port=dest_port,
                            attempt=attempt, tls=tls)
        if not self.same_path:
            return cast(dict[str, Any], result)
        return dict(result, socket=self._dest_socket.get(
            (migration_id, attempt), result["socket"]))

    def get_status(self, host: str, migration_id: str) -> dict[str, Any]:
        return cast(dict[str, Any],
                    self._call(host, "get_status", migration_id=migration_id))

    def supports_attempt_abort(self) -> bool:
        return self.attempt_abort

    def supports_relay_wait(self) -> bool:
        return self.relay_wait

    def wait_relayed(self, host: str, migration_id: str, attempt: int,
                     wait_s: float) -> dict[str, Any]:
        return cast(dict[str, Any],
                    self._call(host, "wait_relayed",
                               migration_id=migration_id, attempt=attempt,
                               wait_s=wait_s))

    def abort(self, host: str, migration_id: str,
              reason: str = "aborted by request",
              attempt: int | None = None) -> None:
        self._call(host, "abort", migration_id=migration_id, reason=reason,
                   attempt=attempt)

    def cleanup(self, host: str, migration_id: str) -> None:
        self._call(host, "cleanup", migration_id=migration_id)

    def methods(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        return [(h, kw) for h, m, kw in self.calls if m == name]
