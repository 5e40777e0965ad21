"""RPC endpoint of dcmigrate-agent: prepares and tracks migration sessions.

RPC carries control only (prepare, status, abort, cleanup); pages travel on
the authenticated agent-to-agent connections.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
import uuid
from typing import Any

from oslo_log import log as logging
from oslo_utils import netutils
import oslo_messaging as messaging

from nova_dcmigrate.agent.destination import DestinationSession
from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent.holder import HolderRelay
from nova_dcmigrate.agent import local_socket
from nova_dcmigrate.agent.page_store import CopyBudget
from nova_dcmigrate.agent.page_store import PageStore
from nova_dcmigrate.agent.peer_listener import PeerListener
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent import rpcapi
from nova_dcmigrate.agent import session as sess
from nova_dcmigrate.agent.source import SourceSession
from nova_dcmigrate.agent.tls import PeerTLS
from nova_dcmigrate.stream import fastpath

LOG = logging.getLogger(__name__)

MIN_SECRET_LEN = 32
#: How often a relay wait checks whether its session ended meanwhile.
RELAY_WAIT_TICK_S = 0.05
MIB = 1024 * 1024
#: Longest sleep of the expiry thread (s).
EXPIRY_POLL_MAX = 30.0


def _check_id(migration_id: str) -> str:
    try:
        return str(uuid.UUID(migration_id))
    except (ValueError, TypeError, AttributeError):
        raise exception.InvalidRequest(
            migration_id=migration_id,
            reason="migration id must be a UUID") from None


def _valid_rate(rate: Any) -> bool:
    """A rate hint: a positive, finite number of bytes per second."""
    return isinstance(rate, (int, float)) and not isinstance(rate, bool) \
        and 0 < rate < math.inf


class AgentManager:
    """Holds the sessions and page stores of this host's migrations."""

    target = messaging.Target(version=rpcapi.AgentAPI.RPC_API_VERSION)

    def __init__(self, conf: Any, host: str) -> None:
        self.conf = conf          # the [dcmigrate_agent] GroupAttr
        self.host = host
        self._lock = threading.Lock()
        self.sessions: dict[tuple[str, int], sess.MigrationSession] = {}
        self.stores: dict[str, PageStore] = {}
        self.secrets: dict[str, str] = {}
        self.relays: dict[tuple[str, int], HolderRelay] = {}
        # One cap for the page copies of all migrations here.
        self.copy_budget = CopyBudget(conf.copy_store_max_mib * MIB)
        # Migration id -> monotonic time it was last seen in use.
        self.last_used: dict[str, float] = {}
        self._stopping = threading.Event()
        self.tls = PeerTLS.from_conf(conf)
        self.listener = PeerListener(conf.peer_listen_address,
                                     conf.peer_port, self._resolve_peer,
                                     conf.handshake_timeout,
                                     conf.max_peer_connections, self.tls)

    def start(self) -> None:
        local_socket.ensure_base(self.conf.socket_dir)
        stale = local_socket.clear_stale(self.conf.socket_dir)
        if stale:
            LOG.info("removed %(n)d migration socket directories left in "
                     "%(dir)s", {"n": stale, "dir": self.conf.socket_dir})
        if not self.tls.enabled:
            LOG.warning("[dcmigrate_agent] peer_tls is off: guest memory "
                        "crosses the migration network unencrypted "
                        "(frames are authenticated, not secret)")
        # Which per-page code runs (native extension or pure Python).
        LOG.info("per-page code: %s", fastpath.reason
                 if fastpath.native is None else "native (_speedups)")
        self.listener.start()
        threading.Thread(target=self._expiry_loop, name="store-expiry",
                         daemon=True).start()

    # -- expiry --------------------------------------------------------------
    def _expiry_loop(self) -> None:
        poll = min(EXPIRY_POLL_MAX, max(0.2, self.conf.store_expiry / 4))
        while not self._stopping.wait(poll):
            try:
                self.expire_idle()
            except Exception:  # noqa: BLE001 - the thread must go on
                LOG.exception("store expiry failed")

    def _busy(self, migration_id: str) -> bool:
        with self._lock:
            sessions = [s for (m, _a), s in self.sessions.items()
                        if m == migration_id]
            relays = [r for (m, _a), r in self.relays.items()
                      if m == migration_id]
        return any(s.state not in sess.FINAL_STATES for s in sessions) or \
            any(not r.done.is_set() for r in relays)

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Drop migrations unused for ``store_expiry`` seconds: nothing
        of a migration whose controller vanished stays for ever.

        :returns: the migration ids dropped.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            ids = {m for m, _a in self.sessions} | set(self.stores) | \
                set(self.secrets)
        expired = []
        for mid in sorted(ids):
            if self._busy(mid):
                self.last_used[mid] = now
                continue
            last = self.last_used.setdefault(mid, now)
            if now - last >= self.conf.store_expiry:
                expired.append(mid)
        for mid in expired:
            with self._lock:
                store = self.stores.get(mid)
            held = store.counters() if store is not None else None
            LOG.warning("migration %(mid)s: unused for %(s)d s "
                        "([dcmigrate_agent] store_expiry), dropping it "
                        "(%(pages)s pages, %(copied)d MiB copied, "
                        "%(backing)d MiB of guest RAM held)",
                        {"mid": mid, "s": self.conf.store_expiry,
                         "pages": held.pages if held else 0,
                         "copied": (held.copied_bytes if held else 0) >> 20,
                         "backing": (held.backing_bytes if held else 0)
                         >> 20})
            self.cleanup({}, mid)
        return expired

    def _touch(self, migration_id: str) -> None:
        self.last_used[migration_id] = time.monotonic()

    def stop(self) -> None:
        self._stopping.set()
        self.listener.stop()
        with self._lock:
            sessions = list(self.sessions.values())
            stores = list(self.stores.values())
            self.sessions.clear()
            self.stores.clear()
        for s in sessions:
            s.close()
        for st in stores:
            st.close()

    # -- peer side ---------------------------------------------------------
    def _resolve_peer(self, hello: protocol.Hello) -> tuple[
            bytes, Any]:
        if hello.channel == protocol.Channel.RELAY:
            return self._resolve_relay(hello)
        with self._lock:
            s = self.sessions.get((hello.migration_id, hello.attempt))
        if not isinstance(s, DestinationSession):
            raise exception.UnknownMigration(migration_id=hello.migration_id)
        if s.state != sess.SessionState.PREPARED:
            raise exception.InvalidRequest(
                migration_id=hello.migration_id,
                reason="session is %s, not waiting for a peer"
                % s.state.value)
        return s.secret, s.attach_peer

    def _resolve_relay(self, hello: protocol.Hello) -> tuple[bytes, Any]:
        """A new destination wants the pages we hold for this migration."""
        mid = hello.migration_id
        with self._lock:
            store = self.stores.get(mid)
            secret = self.secrets.get(mid)
            writers = [s for (m, _a), s in self.sessions.items()
                       if m == mid and isinstance(s, DestinationSession)
                       and s.state not in sess.FINAL_STATES]
        if store is None or secret is None or not store.configured:
            raise exception.UnknownMigration(migration_id=mid)
        if writers:
            # A store being written cannot be relayed consistently.
            raise exception.InvalidRequest(
                migration_id=mid, reason="pages are still arriving here "
                "(attempt %d); cancel it before relaying"
                % writers[0].attempt)

        def start(conn: protocol.FramedConnection) -> None:
            self._touch(mid)
            # Announce only what the held RAM really contains.
            store.settle()
            relay = HolderRelay(self.conf, mid, store, conn)
            with self._lock:
                old = self.relays.get((mid, hello.attempt))
                self.relays[(mid, hello.attempt)] = relay
            if old is not None:
                old.abort()
            relay.start()
            LOG.info("migration %(mid)s: relaying held pages to %(peer)s "
                     "for attempt %(att)d",
                     {"mid": mid, "peer": conn.peer, "att": hello.attempt})

        return secret.encode(), start

    # -- helpers -------------------------------------------------------------
    def _add(self, key: tuple[str, int], s: sess.MigrationSession) -> None:
        with self._lock:
            old = self.sessions.get(key)
            if old is not None and old.state not in sess.FINAL_STATES:
                raise exception.SessionExists(migration_id=key[0])
            self.sessions[key] = s

    def _sessions_of(self, migration_id: str) -> list[sess.MigrationSession]:
        with self._lock:
            return [s for (mid, _a), s in self.sessions.items()
                    if mid == migration_id]

    @staticmethod
    def _check_secret(migration_id: str, secret: str) -> None:
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LEN:
            raise exception.InvalidRequest(
                migration_id=migration_id,
                reason="secret must be a string of at least %d characters"
                % MIN_SECRET_LEN)

    def _bind_secret(self, migration_id: str, secret: str) -> None:
        """Record the migration's secret, or check it against the one
        recorded (constant time): a second prepare with another secret
        must not take over a migration.  Caller holds the lock.

        :raises SecretMismatch: the migration has another secret.
        """
        known = self.secrets.get(migration_id)
        if known is None:
            self.secrets[migration_id] = secret
        elif not hmac.compare_digest(known.encode(), secret.encode()):
            raise exception.SecretMismatch(migration_id=migration_id)

    def _check_tls(self, tls: Any) -> None:
        if tls and not self.tls.enabled:
            raise exception.TLSConfigError(
                reason="the migration requires TLS between agents but "
                       "[dcmigrate_agent] peer_tls is off on host %s"
                       % self.host)

    @staticmethod
    def _refuse_tcp(migration_id: str, port: Any) -> None:
        if port is not None:
            raise exception.InvalidRequest(
                migration_id=migration_id,
                reason="local TCP ports are no longer supported (any local "
                       "process could connect); the caller must use RPC "
                       "API 1.3 and the returned UNIX socket")

    # -- RPC API (see AgentAPI for the version history) ------------------
    @messaging.expose
    def ping(self, ctxt: Any) -> dict[str, Any]:
        return {"host": self.host, "version": rpcapi.AgentAPI.RPC_API_VERSION,
                "peer_port": self.listener.port, "tls": self.tls.enabled}

    @messaging.expose
    def prepare_destination(self, ctxt: Any, migration_id: str, secret: str,
                            qemu_port: int | None = None, attempt: int = 0,
                            holders: list[dict[str, Any]] | None = None,
                            split: bool = True,
                            source_rate: float | None = None,
                            tls: bool = False,
                            guest_memory: int | None = None
                            ) -> dict[str, Any]:
        """Expect a stream for ``migration_id`` and feed it to the local
        QEMU, which listens on the returned UNIX socket ``socket`` (its
        directory is created here, 0700 and owned by the QEMU user).

        :param qemu_port: refused (RPC API < 1.3 used a loopback port).
        :param tls: the caller requires TLS on the agents' links (refused
            when ``peer_tls`` is off here).

        :param holders: agents holding pages of this migration
            (``{"host", "address", "port"}`` and optionally ``"rate"``, the
            holder's expected upload rate in bytes/s); their pages are
            relayed and merged into the stream (a redirect).  Pages this
            agent still holds from an earlier attempt are reused too (a
            resume).
        :param split: balance the first pass between the source and the
            holders (the optimised split); False relays every held page.
        :param source_rate: the source's expected upload rate (bytes/s).
            With every holder's rate, it places the first frontier before
            anything was measured; without, equal rates are assumed.
        :param guest_memory: the domain's memory (bytes); RAM blocks
            summing to more than this plus ``ram_overhead_mib`` are
            refused before anything is allocated for them.
        """
        migration_id = _check_id(migration_id)
        self._check_secret(migration_id, secret)
        self._refuse_tcp(migration_id, qemu_port)
        self._check_tls(tls)
        if not isinstance(attempt, int) or attempt < 0:
            raise exception.InvalidRequest(migration_id=migration_id,
                                           reason="bad attempt %r" % attempt)
        holders = list(holders or [])
        for h in holders:
            if not isinstance(h, dict) or \
                    not netutils.is_valid_ip(str(h.get("address"))) or \
                    not netutils.is_valid_port(h.get("port", -1)):
                raise exception.InvalidRequest(
                    migration_id=migration_id,
                    reason="bad holder %r" % (h,))
            if "rate" in h and not _valid_rate(h["rate"]):
                raise exception.InvalidRequest(
                    migration_id=migration_id,
                    reason="bad rate for holder %r" % (h,))
        if source_rate is not None and not _valid_rate(source_rate):
            raise exception.InvalidRequest(
                migration_id=migration_id,
                reason="bad source rate %r" % (source_rate,))
        ram_limit = None
        if guest_memory is not None:
            if not isinstance(guest_memory, int) or \
                    isinstance(guest_memory, bool) or guest_memory <= 0:
                raise exception.InvalidRequest(
                    migration_id=migration_id,
                    reason="bad guest memory %r" % (guest_memory,))
            ram_limit = guest_memory + self.conf.ram_overhead_mib * MIB
        with self._lock:
            self._bind_secret(migration_id, secret)
            store = self.stores.get(migration_id)
            if store is None:
                store = PageStore(sess.digest_seed(secret.encode()),
                                  budget=self.copy_budget,
                                  ram_limit=ram_limit,
                                  migration_id=migration_id)
                self.stores[migration_id] = store
            elif ram_limit is not None:
                store.ram_limit = ram_limit
            self.last_used[migration_id] = time.monotonic()
        # A new attempt supersedes older ones here: nothing but it may
        # write into the migration's page store from now on.
        for old in self._sessions_of(migration_id):
            if isinstance(old, DestinationSession) and \
                    old.attempt != int(attempt) and \
                    old.state not in sess.FINAL_STATES:
                old.abort("superseded by attempt %d" % int(attempt))
        s = DestinationSession(self.conf, migration_id, secret,
                               int(attempt), store,
                               holders, bool(split),
                               None if source_rate is None
                               else float(source_rate), self.tls)
        self._add((migration_id, int(attempt)), s)
        try:
            s.prepare_socket()
        except exception.AgentError:
            with self._lock:
                self.sessions.pop((migration_id, int(attempt)), None)
            s.close()
            raise
        if self.conf.connect_holders_early:
            s.connect_holders_early()
        LOG.info("migration %(mid)s attempt %(att)d: destination prepared "
                 "(QEMU socket %(path)s)", {"mid": migration_id,
                                            "att": attempt,
                                            "path": s.socket_path})
        return {"peer_port": self.listener.port, "socket": s.socket_path}

    @messaging.expose
    def prepare_source(self, ctxt: Any, migration_id: str, secret: str,
                       dest_address: str, dest_port: int,
                       attempt: int = 0,
                       listen_port: int | None = None,
                       tls: bool = False) -> dict[str, Any]:
        """Listen on the returned UNIX socket ``socket`` (root-only
        directory) for the local migration connection and carry it to the
        agent at dest_address:dest_port.

        :param listen_port: refused (RPC API < 1.3 used a loopback port).
        """
        migration_id = _check_id(migration_id)
        self._check_secret(migration_id, secret)
        self._refuse_tcp(migration_id, listen_port)
        self._check_tls(tls)
        if not isinstance(attempt, int) or attempt < 0:
            raise exception.InvalidRequest(migration_id=migration_id,
                                           reason="bad attempt %r" % attempt)
        if not netutils.is_valid_port(dest_port):
            raise exception.InvalidRequest(migration_id=migration_id,
                                           reason="bad port %r" % dest_port)
        if not netutils.is_valid_ip(dest_address):
            raise exception.InvalidRequest(
                migration_id=migration_id,
                reason="bad destination address %r" % dest_address)
        with self._lock:
            self._bind_secret(migration_id, secret)
            self.last_used[migration_id] = time.monotonic()
        s = SourceSession(self.conf, migration_id, secret, int(attempt),
                          dest_address, int(dest_port), self.tls)
        self._add((migration_id, int(attempt)), s)
        try:
            s.start()
        except (OSError, exception.AgentError) as err:
            with self._lock:
                self.sessions.pop((migration_id, int(attempt)), None)
            s.close()
            if isinstance(err, exception.AgentError):
                raise
            raise exception.LocalSocketError(
                migration_id=migration_id, path=s.socket_path,
                reason=str(err)) from err
        LOG.info("migration %(mid)s attempt %(att)d: source prepared on "
                 "%(path)s -> %(dest)s:%(dport)d",
                 {"mid": migration_id, "att": attempt, "path": s.socket_path,
                  "dest": dest_address, "dport": dest_port})
        return {"socket": s.socket_path}

    @messaging.expose
    def get_status(self, ctxt: Any, migration_id: str) -> dict[str, Any]:
        migration_id = _check_id(migration_id)
        sessions = self._sessions_of(migration_id)
        with self._lock:
            store = self.stores.get(migration_id)
        if not sessions and store is None:
            raise exception.UnknownMigration(migration_id=migration_id)
        result: dict[str, Any] = {
            "host": self.host, "migration_id": migration_id,
            "attempts": sorted((s.status() for s in sessions),
                               key=lambda d: d["attempt"]),
        }
        if store is not None:
            c = store.counters()
            result["store"] = {"pages": c.pages, "zero_pages": c.zero_pages,
                               "bytes_held": c.bytes_held,
                               "copied_bytes": c.copied_bytes,
                               "backing_bytes": c.backing_bytes,
                               "backing_pids": store.backing_pids()}
        with self._lock:
            relays = [r.status() for (m, _a), r in self.relays.items()
                      if m == migration_id]
        if relays:
            result["relays"] = relays
        return result

    @messaging.expose
    def wait_relayed(self, ctxt: Any, migration_id: str, attempt: int,
                     wait_s: float) -> dict[str, Any]:
        """:meth:`get_status`, once attempt ``attempt``'s relays are in
        here, its session ended, or ``wait_s`` seconds passed (at most
        :data:`rpcapi.MAX_RELAY_WAIT_S`).

        Why: a controller holds the switchover back (1 ms maximum
        downtime) until the new destination has every relayed page.  It
        learns the moment from this call rather than from a backed-off
        poll, which saw the end of the relays up to a second late while
        the guest kept migrating (RPC 1.5).
        """
        migration_id = _check_id(migration_id)
        if not isinstance(attempt, int) or isinstance(attempt, bool) or \
                attempt < 0:
            raise exception.InvalidRequest(migration_id=migration_id,
                                           reason="bad attempt %r" % attempt)
        if not isinstance(wait_s, (int, float)) or \
                isinstance(wait_s, bool) or not 0 <= wait_s < math.inf:
            raise exception.InvalidRequest(migration_id=migration_id,
                                           reason="bad wait_s %r" % wait_s)
        with self._lock:
            session = self.sessions.get((migration_id, attempt))
        relay_done = getattr(session, "relay_done", None)
        if session is not None and relay_done is not None:
            deadline = time.monotonic() + min(wait_s, rpcapi.MAX_RELAY_WAIT_S)
            while not session.done.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or relay_done.wait(min(left,
                                                    RELAY_WAIT_TICK_S)):
                    break
        status: dict[str, Any] = self.get_status(ctxt, migration_id)
        return status

    @messaging.expose
    def list_migrations(self, ctxt: Any) -> list[str]:
        with self._lock:
            ids = {mid for mid, _a in self.sessions} | set(self.stores)
        return sorted(ids)

    @messaging.expose
    def abort(self, ctxt: Any, migration_id: str,
              reason: str = "aborted by request",
              attempt: int | None = None) -> None:
        """End the migration's sessions here; with ``attempt`` only that
        attempt's (a controller may have prepared the next one already).
        Page stores stay."""
        migration_id = _check_id(migration_id)
        if attempt is not None and (not isinstance(attempt, int) or
                                    isinstance(attempt, bool) or
                                    attempt < 0):
            raise exception.InvalidRequest(migration_id=migration_id,
                                           reason="bad attempt %r" % attempt)
        for s in self._sessions_of(migration_id):
            if attempt is None or s.attempt == attempt:
                s.abort(reason)

    @messaging.expose
    def cleanup(self, ctxt: Any, migration_id: str) -> None:
        """Forget the migration: close its sessions, drop its page store."""
        migration_id = _check_id(migration_id)
        with self._lock:
            keys = [k for k in self.sessions if k[0] == migration_id]
            sessions = [self.sessions.pop(k) for k in keys]
            store = self.stores.pop(migration_id, None)
            self.secrets.pop(migration_id, None)
            rkeys = [k for k in self.relays if k[0] == migration_id]
            relays = [self.relays.pop(k) for k in rkeys]
            self.last_used.pop(migration_id, None)
        for r in relays:
            r.abort()
        for s in sessions:
            s.close()
        if store is not None:
            store.close()
        LOG.info("migration %(mid)s: cleaned up", {"mid": migration_id})

    @messaging.expose
    def peer_stats(self, ctxt: Any) -> dict[str, int]:
        return {"accepted": self.listener.accepted,
                "rejected": self.listener.rejected,
                "over_limit": self.listener.over_limit}
