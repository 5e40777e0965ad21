"""Client side of the dcmigrate-agent RPC API.

API version history:

* 1.0 - Initial version: ping, prepare_destination, prepare_source,
        get_status, list_migrations, abort, cleanup, peer_stats.
* 1.1 - prepare_destination: new ``holders`` and ``split`` arguments
        (redirect relays, optimised split on/off).
* 1.2 - prepare_destination: new ``source_rate`` argument and an optional
        ``rate`` per holder (expected upload rates for the first plan).
* 1.3 - prepare_destination and prepare_source: no loopback port any more
        (``qemu_port``, ``listen_port`` refused); both return ``socket``,
        the attempt's UNIX socket path (the same on both hosts), and
        refuse a second prepare with another secret (SecretMismatch); new
        ``tls`` argument (refused unless ``peer_tls`` is on); ``ping``
        reports ``tls``. prepare_destination: new ``guest_memory``
        argument (the domain's memory, bounding the RAM blocks a stream
        may announce).
* 1.4 - abort: new ``attempt`` argument (end only that attempt's
        sessions), so a controller can prepare the next attempt before it
        stops the running one.
* 1.5 - new ``wait_relayed``: ``get_status`` once an attempt's relays are
        in (or its session ended, or a timeout), so a controller lifts
        the switchover gate at once instead of polling.
"""

from __future__ import annotations

from typing import Any
from typing import cast

import oslo_messaging as messaging

from nova_dcmigrate.agent import exception
from nova_dcmigrate import rpc

TOPIC = "dcmigrate-agent"
#: The exchange of the agent RPC, pinned in both Targets. nova-compute's
#: ``control_exchange`` is ``nova`` (``nova.config``) while a standalone
#: agent's would be oslo.messaging's default ``openstack``: unpinned, the
#: two never met (found by the lab cloud, doc/source/lab-cloud.rst).
EXCHANGE = "nova"
#: Longest ``wait_relayed`` wait an agent grants (seconds): a caller that
#: wants longer asks again, so a wait never outlives its RPC timeout.
MAX_RELAY_WAIT_S = 10.0


class AgentAPI:
    RPC_API_VERSION = "1.5"

    def __init__(self, transport: messaging.RPCTransport,
                 version_cap: str | None = None,
                 timeout: float | None = 60) -> None:
        target = messaging.Target(exchange=EXCHANGE, topic=TOPIC,
                                  version="1.5")
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

    def _require_unix(self, migration_id: str) -> None:
        if not self.client.can_send_version("1.3"):
            raise exception.InvalidRequest(
                migration_id=migration_id,
                reason="RPC version cap is below 1.3: agents before 1.3 "
                       "listen on loopback TCP ports, which any local "
                       "process can reach")

    def prepare_destination(self, host: str, migration_id: str, secret: str,
                            attempt: int = 0,
                            holders: list[dict[str, Any]] | None = None,
                            split: bool = True,
                            source_rate: float | None = None,
                            tls: bool = False,
                            guest_memory: int | None = None
                            ) -> dict[str, Any]:
        """Prepare a destination.

        :param tls: refuse unless the agent's links use TLS.
        :param guest_memory: the domain's memory in bytes; the destination
            refuses a stream announcing more RAM than that allows.

        :returns: ``peer_port`` and ``socket``, the UNIX socket path the
            destination QEMU must listen on.
        """
        self._require_unix(migration_id)
        kwargs: dict[str, Any] = {
            "migration_id": migration_id, "secret": secret,
            "attempt": attempt, "split": split}
        if holders:
            kwargs["holders"] = holders
        if source_rate is not None:
            kwargs["source_rate"] = source_rate
        if tls:
            kwargs["tls"] = True
        if guest_memory is not None:
            kwargs["guest_memory"] = int(guest_memory)
        return cast(dict[str, Any], self._call(
            host, "prepare_destination", version="1.3", **kwargs))

    def prepare_source(self, host: str, migration_id: str, secret: str,
                       dest_address: str, dest_port: int,
                       attempt: int = 0, tls: bool = False
                       ) -> dict[str, Any]:
        """Prepare a source.

        :returns: ``socket``, the UNIX socket path libvirtd/QEMU connects
            to.
        """
        self._require_unix(migration_id)
        extra = {"tls": True} if tls else {}
        return cast(dict[str, Any], self._call(
            host, "prepare_source", version="1.3",
            migration_id=migration_id, secret=secret,
            dest_address=dest_address, dest_port=dest_port,
            attempt=attempt, **extra))

    def get_status(self, host: str, migration_id: str) -> dict[str, Any]:
        return cast(dict[str, Any],
                    self._call(host, "get_status", migration_id=migration_id))

    def supports_relay_wait(self) -> bool:
        """Whether :meth:`wait_relayed` may be called (RPC 1.5)."""
        return bool(self.client.can_send_version("1.5"))

    def wait_relayed(self, host: str, migration_id: str, attempt: int,
                     wait_s: float) -> dict[str, Any]:
        """``get_status`` of ``host`` once attempt ``attempt``'s relays are
        in there, its session ended, or ``wait_s`` seconds passed (the
        agent caps it at :data:`MAX_RELAY_WAIT_S`); needs
        :meth:`supports_relay_wait`."""
        return cast(dict[str, Any], self._call(
            host, "wait_relayed", version="1.5",
            timeout=min(wait_s, MAX_RELAY_WAIT_S) + 30.0,
            migration_id=migration_id, attempt=attempt, wait_s=wait_s))

    def list_migrations(self, host: str) -> list[str]:
        return cast(list[str], self._call(host, "list_migrations"))

    def supports_attempt_abort(self) -> bool:
        """Whether :meth:`abort` may name one attempt (RPC 1.4)."""
        return bool(self.client.can_send_version("1.4"))

    def abort(self, host: str, migration_id: str,
              reason: str = "aborted by request",
              attempt: int | None = None) -> None:
        """End the migration's sessions on ``host`` (only ``attempt``'s
        when given; needs :meth:`supports_attempt_abort`)."""
        if attempt is None:
            self._call(host, "abort", migration_id=migration_id,
                       reason=reason)
            return
        self._call(host, "abort", version="1.4", migration_id=migration_id,
                   reason=reason, attempt=attempt)

    def cleanup(self, host: str, migration_id: str) -> None:
        self._call(host, "cleanup", migration_id=migration_id)

    def peer_stats(self, host: str) -> dict[str, int]:
        return cast(dict[str, int], self._call(host, "peer_stats"))
