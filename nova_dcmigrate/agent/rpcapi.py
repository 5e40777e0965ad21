"""Client side of the dcmigrate-agent RPC API.

API version history:

* 1.0 - Initial version: ping, prepare_destination, prepare_source,
        get_status, list_migrations, abort, cleanup, peer_stats.
* 1.1 - prepare_destination: new ``holders`` and ``split`` arguments
        (redirect relays, optimised split on/off).
* 1.2 - prepare_destination: new ``source_rate`` argument and an optional
        ``rate`` per holder (expected upload rates for the first plan).
* 1.3 - prepare_destination: new ``guest_memory`` argument (the domain's
        memory, bounding the RAM blocks a stream may announce).
"""

from __future__ import annotations

from typing import Any
from typing import cast

import oslo_messaging as messaging

from nova_dcmigrate.agent import exception
from nova_dcmigrate import rpc

TOPIC = "dcmigrate-agent"


class AgentAPI:
    RPC_API_VERSION = "1.3"

    def __init__(self, transport: messaging.RPCTransport,
                 version_cap: str | None = None,
                 timeout: float | None = 60) -> None:
        target = messaging.Target(topic=TOPIC, version="1.3")
        self.client = rpc.get_client(transport, target,
                                     version_cap=version_cap,
                                     timeout=timeout)

    def _call(self, host: str, method: str, version: str = "1.0",
              timeout: float | None = None, **kwargs: Any) -> Any:
        options: dict[str, Any] = {"server": host, "version": version}
        if timeout is not None:
            # Only when given: prepare(timeout=None) would wait forever.
            options["timeout"] = timeout
        cctxt = self.client.prepare(**options)
        return cctxt.call({}, method, **kwargs)

    def ping(self, host: str,
             timeout: float | None = None) -> dict[str, Any]:
        """Ping ``host``'s agent.

        :param timeout: seconds to wait for the answer, instead of the
            client's timeout.
        :raises oslo_messaging.MessagingTimeout: no agent answered.
        """
        return cast(dict[str, Any], self._call(host, "ping",
                                               timeout=timeout))

    def prepare_destination(self, host: str, migration_id: str, secret: str,
                            qemu_port: int, attempt: int = 0,
                            holders: list[dict[str, Any]] | None = None,
                            split: bool = True,
                            source_rate: float | None = None,
                            guest_memory: int | None = None
                            ) -> dict[str, Any]:
        """Prepare a destination; rate hints are dropped (not an error)
        when the version cap predates them, they only tune the plan, and
        so is ``guest_memory`` (an older agent does not check it)."""
        kwargs: dict[str, Any] = {
            "migration_id": migration_id, "secret": secret,
            "qemu_port": qemu_port, "attempt": attempt}
        version = "1.0"
        if holders:
            if not self.client.can_send_version("1.1"):
                raise exception.InvalidRequest(
                    migration_id=migration_id,
                    reason="RPC version cap forbids relays from holders")
            version = "1.1"
            if self.client.can_send_version("1.2"):
                version = "1.2"
                if source_rate is not None:
                    kwargs["source_rate"] = source_rate
            else:
                holders = [{k: v for k, v in h.items() if k != "rate"}
                           for h in holders]
            kwargs["holders"] = holders
            kwargs["split"] = split
        if guest_memory is not None and self.client.can_send_version("1.3"):
            version = "1.3"
            kwargs["guest_memory"] = guest_memory
        return cast(dict[str, Any], self._call(
            host, "prepare_destination", version=version, **kwargs))

    def prepare_source(self, host: str, migration_id: str, secret: str,
                       listen_port: int, dest_address: str, dest_port: int,
                       attempt: int = 0) -> dict[str, Any]:
        return cast(dict[str, Any], self._call(
            host, "prepare_source", migration_id=migration_id,
            secret=secret, listen_port=listen_port,
            dest_address=dest_address, dest_port=dest_port,
            attempt=attempt))

    def get_status(self, host: str, migration_id: str) -> dict[str, Any]:
        return cast(dict[str, Any],
                    self._call(host, "get_status", migration_id=migration_id))

    def list_migrations(self, host: str) -> list[str]:
        return cast(list[str], self._call(host, "list_migrations"))

    def abort(self, host: str, migration_id: str,
              reason: str = "aborted by request") -> None:
        self._call(host, "abort", migration_id=migration_id, reason=reason)

    def cleanup(self, host: str, migration_id: str) -> None:
        self._call(host, "cleanup", migration_id=migration_id)

    def peer_stats(self, host: str) -> dict[str, int]:
        return cast(dict[str, int], self._call(host, "peer_stats"))
