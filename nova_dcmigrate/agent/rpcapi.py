"""Client side of the dcmigrate-agent RPC API.

API version history:

* 1.0 - Initial version: ping, prepare_destination, prepare_source,
        get_status, list_migrations, abort, cleanup, peer_stats.
"""

from __future__ import annotations

from typing import Any

import oslo_messaging as messaging

from nova_dcmigrate import rpc

TOPIC = "dcmigrate-agent"


class AgentAPI:
    RPC_API_VERSION = "1.0"

    def __init__(self, transport: messaging.RPCTransport,
                 version_cap: str | None = None,
                 timeout: float | None = 60) -> None:
        target = messaging.Target(topic=TOPIC, version="1.0")
        self.client = rpc.get_client(transport, target,
                                     version_cap=version_cap,
                                     timeout=timeout)

    def _call(self, host: str, method: str, **kwargs: Any) -> Any:
        cctxt = self.client.prepare(server=host, version="1.0")
        return cctxt.call({}, method, **kwargs)

    def ping(self, host: str) -> dict[str, Any]:
        return self._call(host, "ping")

    def prepare_destination(self, host: str, migration_id: str, secret: str,
                            qemu_port: int, attempt: int = 0
                            ) -> dict[str, Any]:
        return self._call(host, "prepare_destination",
                          migration_id=migration_id, secret=secret,
                          qemu_port=qemu_port, attempt=attempt)

    def prepare_source(self, host: str, migration_id: str, secret: str,
                       listen_port: int, dest_address: str, dest_port: int,
                       attempt: int = 0) -> dict[str, Any]:
        return self._call(host, "prepare_source", migration_id=migration_id,
                          secret=secret, listen_port=listen_port,
                          dest_address=dest_address, dest_port=dest_port,
                          attempt=attempt)

    def get_status(self, host: str, migration_id: str) -> dict[str, Any]:
        return self._call(host, "get_status", migration_id=migration_id)

    def list_migrations(self, host: str) -> list[str]:
        return self._call(host, "list_migrations")

    def abort(self, host: str, migration_id: str,
              reason: str = "aborted by request") -> None:
        self._call(host, "abort", migration_id=migration_id, reason=reason)

    def cleanup(self, host: str, migration_id: str) -> None:
        self._call(host, "cleanup", migration_id=migration_id)

    def peer_stats(self, host: str) -> dict[str, int]:
        return self._call(host, "peer_stats")
