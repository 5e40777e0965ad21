"""Redirectable live migration on the lab, driven over QMP.

One migration (one id, one secret) is a sequence of attempts.  A redirect
cancels the running attempt on the source (``migrate_cancel``: the guest
keeps running there), and starts a new attempt to the new host listing
every earlier destination as a holder: their agents relay the pages they
stored while the source sends only the rest.  Until the relays are in,
switchover is held back with a ``downtime-limit`` of 1 ms, then restored,
so the relay backlog never lands in the downtime.  (Not 0: QEMU 10 treats
a zero limit as "no limit" at the end of a pass and switches over at once
-- measured: 2 dirty syncs and 3.1 s downtime with 0, 20 syncs and 143 ms
with 1 ms.)  The gate needs a true bandwidth figure too: the source drops
held pages at local speed, so QEMU's own estimate is far too high and
even 1 ms would let a busy guest switch over early (measured: 6-8 s of
downtime with a 100 Mbit holder).  Redirected attempts therefore set
``avail-switchover-bandwidth`` to the rate the source link really moved.

The libvirt-level controller (virt/libvirt) follows the same steps.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
import uuid
from typing import Any

from oslo_log import log as logging

from nova_dcmigrate.exception import DcmigrateError
from nova_dcmigrate.lab.agents import LabAgents
from nova_dcmigrate.lab.direct import UNLIMITED_BANDWIDTH
from nova_dcmigrate.lab import exception as lab_exc
from nova_dcmigrate.lab.qemu import MigrationResult
from nova_dcmigrate.lab.qemu import QemuGuest
from nova_dcmigrate.lab.topology import Lab
from nova_dcmigrate.virt import attempts

LOG = logging.getLogger(__name__)

DEFAULT_DOWNTIME_MS = 300
#: downtime-limit that holds switchover back while relays run (see above).
GATE_DOWNTIME_MS = 1
REDIRECTABLE = ("active",)


class RedirectRefused(DcmigrateError):
    msg_fmt = "Cannot redirect migration %(migration_id)s: %(reason)s"


@dataclasses.dataclass
class Attempt:
    number: int
    dst_host: str
    #: (source agent's socket, destination QEMU's socket)
    sockets: tuple[str, str]
    dst_guest: QemuGuest
    holders: list[str]
    started: float
    ended: float | None = None
    outcome: str = "running"
    source_rate: float = 0.0      # bytes/s the source link really moves


@dataclasses.dataclass
class _Pending:
    """A next attempt prepared before the running one is cancelled."""

    number: int
    dst_host: str
    sockets: tuple[str, str]
    dst_guest: QemuGuest
    holders: list[str]


class RedirectableMigration:
    """A live migration of one lab guest that can change destination."""

    def __init__(self, lab: Lab, agents: LabAgents, src: QemuGuest, *,
                 downtime_ms: int = DEFAULT_DOWNTIME_MS,
                 gate_switchover: bool = True,
                 split: bool = True,
                 max_retries: int = 3) -> None:
        self.lab = lab
        self.agents = agents
        self.src = src
        self.migration_id = str(uuid.uuid4())
        self.secret = secrets.token_hex(32)
        self.downtime_ms = downtime_ms
        self.gate_switchover = gate_switchover
        self.split = split
        self.max_retries = max_retries
        self.attempts: list[Attempt] = []
        self.redirected_at: float | None = None
        self.started_at: float | None = None
        self.result: MigrationResult | None = None
        self.dead_holders: set[str] = set()
        # Bytes/s the source's link really moves (0: not known yet).
        self.source_link_rate = 0.0
        self._gate_thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def api(self) -> Any:
        assert self.agents.api is not None
        return self.agents.api

    @property
    def current(self) -> Attempt:
        return self.attempts[-1]

    def holders_for(self, dst_host: str) -> list[str]:
        """Every earlier destination still alive, newest first (the new
        host's own store is reused by its agent without being listed)."""
        return attempts.holders_for((a.dst_host for a in self.attempts),
                                    dst_host, self.dead_holders)

    # -- attempts ----------------------------------------------------------
    def start(self, dst_host: str,
              pending: _Pending | None = None) -> Attempt:
        """Start an attempt to ``dst_host``.

        :param pending: the destination, when :meth:`redirect` prepared
            it before cancelling the previous attempt.
        """
        if self.started_at is None:
            self.started_at = time.monotonic()
            # As libvirt 11 does: the new destination's agent holds the
            # switchover ack until its relays are in.
            self.src.set_migration_caps(switchover_ack=True)
            self.src.set_migration_params(**{
                "max-bandwidth": UNLIMITED_BANDWIDTH,
                "downtime-limit": self.downtime_ms})
        if pending is None or pending.number != len(self.attempts) or \
                pending.dst_host != dst_host:
            pending = self._prepare(dst_host)
        number, holders = pending.number, pending.holders
        dst = pending.dst_guest
        try:
            if self.attempts:
                # The source drops held pages at local speed, which makes
                # QEMU's own bandwidth estimate far too high: even the 1
                # ms gate would let it switch over with relays still
                # running.  Use the rate the source link really moved (0:
                # QEMU's own).
                self.src.set_migration_params(**{
                    "avail-switchover-bandwidth":
                        int(self.source_link_rate)})
            if holders and self.gate_switchover:
                self.src.set_migration_params(**{
                    "downtime-limit": GATE_DOWNTIME_MS})
            attempt = Attempt(number, dst_host, pending.sockets, dst,
                              holders, time.monotonic())
            self.attempts.append(attempt)
            LOG.info("migration %s attempt %d -> %s (holders %s)",
                     self.migration_id, number, dst_host, holders or "none")
            self.src.migrate("unix:" + pending.sockets[0])
        except BaseException:
            dst.stop()
            raise
        if holders and self.gate_switchover:
            self._gate_thread = threading.Thread(
                target=self._ungate_when_relayed, args=(attempt,),
                daemon=True)
            self._gate_thread.start()
        return attempt

    def _prepare(self, dst_host: str) -> _Pending:
        """Start the destination QEMU (``-incoming defer``) and prepare
        both agents for the next attempt; the source QEMU is not touched,
        so this may run while the previous attempt still migrates.

        :raises: whatever failed; nothing is left running then.
        """
        number = len(self.attempts)
        holders = self.holders_for(dst_host)
        dst = QemuGuest.start(
            self.lab, dst_host, self.src.image,
            memory_mib=self.src.memory_mib, dirty_mib=self.src.dirty_mib,
            dirty_rate=self.src.dirty_rate, incoming="defer")
        try:
            dst.set_migration_caps(switchover_ack=True)
            holder_specs = [dict({"host": h,
                                  "address": self.lab.hosts[h].address,
                                  "port": self.agents.peer_port},
                                 **self._rate_hint(h))
                            for h in holders]
            dpath = self.api.prepare_destination(
                dst_host, self.migration_id, self.secret, number,
                holder_specs, self.split,
                self._rate_hint(self.src.host).get("rate"),
                tls=self.agents.tls)["socket"]
            dst.migrate_incoming("unix:" + dpath)
            spath = self.api.prepare_source(
                self.src.host, self.migration_id, self.secret,
                self.lab.hosts[dst_host].address, self.agents.peer_port,
                number, tls=self.agents.tls)["socket"]
        except BaseException:
            dst.stop()
            self._abort_attempt([dst_host, self.src.host], number)
            raise
        return _Pending(number, dst_host, (spath, dpath), dst, holders)

    def _abort_attempt(self, hosts: list[str], number: int) -> None:
        attempts.abort_agents(self.api, self.migration_id, hosts,
                              attempt=number)

    def _drop(self, pending: _Pending | None) -> None:
        """Undo :meth:`_prepare` (the redirect did not happen)."""
        if pending is None:
            return
        pending.dst_guest.stop()
        self._abort_attempt([pending.dst_host, self.src.host],
                            pending.number)

    def _rate_hint(self, host: str) -> dict[str, float]:
        """The host's configured upload rate (bytes/s), if shaped: the
        agents' first frontier uses it before anything is measured."""
        up = self.lab.rates(host)[0]
        return {} if up is None else {"rate": up / 8.0}

    def _ungate_when_relayed(self, attempt: Attempt) -> None:
        """Restore the downtime budget once every relayed page is in."""
        done = attempts.wait_relayed(
            self.api, attempt.dst_host, self.migration_id, attempt.number,
            lambda: attempt.outcome == "running", timeout=600)
        if done.source_rate:
            attempt.source_rate = done.source_rate
        self._set_downtime(attempt)

    def _set_downtime(self, attempt: Attempt) -> None:
        with self._lock:
            if attempt is self.current and attempt.outcome == "running":
                params: dict[str, int] = {"downtime-limit": self.downtime_ms}
                if attempt.source_rate > 0:
                    # Dropped pages make QEMU see a faster link than the
                    # real one; give it the rate measured at the new
                    # destination so its switchover decision holds.
                    params["avail-switchover-bandwidth"] = \
                        int(attempt.source_rate)
                try:
                    self.src.set_migration_params(**params)
                except lab_exc.LabError as err:
                    LOG.warning("cannot restore downtime-limit: %s", err)

    def resume(self) -> Attempt:
        """Restart the current attempt to the same host (after a link or
        agent failure): the host's agent reuses every page it stored, so
        only what it lacks is sent again."""
        return self.redirect(self.current.dst_host, _resume=True)

    def redirect(self, new_host: str, _resume: bool = False) -> Attempt:
        """Change the destination of the running migration.

        :raises RedirectRefused: the migration is not in a state where the
            destination can still change (switchover started, completed,
            failed, post-copy); nothing is changed then.
        """
        if new_host == self.src.host:
            raise RedirectRefused(migration_id=self.migration_id,
                                  reason="the new host is the source")
        if new_host not in self.lab.hosts:
            raise RedirectRefused(migration_id=self.migration_id,
                                  reason="unknown host %s" % new_host)
        if self.attempts and new_host == self.current.dst_host and \
                not _resume:
            raise RedirectRefused(
                migration_id=self.migration_id,
                reason="%s is already the destination" % new_host)
        info = self.src.query_migrate()
        status = info.get("status")
        if status not in REDIRECTABLE:
            raise RedirectRefused(
                migration_id=self.migration_id,
                reason="source migration is %s; only an active precopy "
                       "migration can be redirected" % status)
        caps = {c["capability"]: c["state"] for c in
                self.src.qmp("query-migrate-capabilities")}
        for cap in ("postcopy-ram", "multifd", "xbzrle", "compress"):
            if caps.get(cap):
                raise RedirectRefused(
                    migration_id=self.migration_id,
                    reason="capability %s is on; the agents cannot "
                           "redirect such a stream" % cap)
        old = self.current
        # QEMU's throughput (Mbit/s) as libvirt's job stats would give it.
        qemu_bps = float(info.get("ram", {}).get("mbps", 0.0)) * 1e6 / 8
        rate = attempts.measured_link_rate(
            bool(old.holders), old.source_rate,
            lambda: {"memory_bps": qemu_bps})
        if rate:
            self.source_link_rate = rate
        self.redirected_at = time.monotonic()
        pending = None
        if new_host != old.dst_host and \
                attempts.can_prepare_ahead(self.api):
            # The new destination (its QEMU and both agents) while the
            # guest still migrates to the old one: off the switch's
            # critical path, and a destination that cannot start leaves
            # the migration going on.
            try:
                pending = self._prepare(new_host)
            except Exception as err:
                raise RedirectRefused(
                    migration_id=self.migration_id,
                    reason="the new destination %s could not be prepared "
                           "(%s); the migration goes on to %s"
                           % (new_host, err, old.dst_host)) from err
        with self._lock:
            old.outcome = "redirected"
            old.ended = time.monotonic()
        try:
            self.src.migrate_cancel()
            self._wait_source_idle()
        except BaseException:
            self._drop(pending)
            raise
        old.dst_guest.stop()
        try:
            # Close the old attempt's sessions even if their peer is
            # unreachable (a cut link never delivers the close).
            self.api.abort(old.dst_host, self.migration_id,
                           "redirected to %s" % new_host)
        except Exception as err:  # noqa: BLE001 - the agent may be gone
            LOG.warning("cannot abort attempt %d on %s: %s", old.number,
                        old.dst_host, err)
        self._wait_attempt_final(old)
        LOG.info("migration %s: redirect %s -> %s", self.migration_id,
                 old.dst_host, new_host)
        return self.start(new_host, pending)

    def _wait_source_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.src.query_migrate().get("status")
            if status in ("cancelled", "failed", "completed", None):
                if status == "completed":
                    raise RedirectRefused(
                        migration_id=self.migration_id,
                        reason="the migration completed before it could "
                               "be cancelled")
                return
            time.sleep(0.05)
        raise lab_exc.LabError(reason="source migration did not stop")

    def _wait_attempt_final(self, attempt: Attempt,
                            timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                st = self.api.get_status(attempt.dst_host,
                                         self.migration_id)
            except Exception:  # noqa: BLE001
                return
            states = [a["state"] for a in st["attempts"]
                      if a["attempt"] == attempt.number]
            if all(s in ("failed", "aborted", "completed") for s in states):
                return
            time.sleep(0.05)

    def wait(self, timeout: float = 600) -> MigrationResult:
        """Wait for completion, retrying without holders that died."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.result = self.src.wait_migration(
                    max(1.0, deadline - time.monotonic()))
                self.current.outcome = "completed"
                self.current.ended = time.monotonic()
                self.current.dst_guest.wait_status(
                    {"paused", "postmigrate"}, timeout=60)
                return self.result
            except lab_exc.MigrationFailed:
                att = self.current
                att.outcome = "failed"
                att.ended = time.monotonic()
                dead = self._failed_holders(att)
                retries = sum(1 for a in self.attempts
                              if a.outcome == "failed")
                if not dead or retries > self.max_retries:
                    raise
                self.dead_holders |= dead
                LOG.warning("migration %s attempt %d failed (holders %s "
                            "lost); retrying to %s", self.migration_id,
                            att.number, sorted(dead), att.dst_host)
                att.dst_guest.stop()
                self._wait_attempt_final(att)
                self.start(att.dst_host)

    def _failed_holders(self, attempt: Attempt) -> set[str]:
        return attempts.failed_holders(self.api, attempt.dst_host,
                                       self.migration_id, attempt.number,
                                       attempt.holders)

    def status(self) -> dict[str, Any]:
        """Agents' view of every attempt (counters per attempt)."""
        out: dict[str, Any] = {}
        for host in {self.src.host} | {a.dst_host for a in self.attempts}:
            try:
                out[host] = self.api.get_status(host, self.migration_id)
            except Exception as err:  # noqa: BLE001
                out[host] = {"error": str(err)}
        return out

    def cleanup(self) -> None:
        for host in {self.src.host} | {a.dst_host for a in self.attempts}:
            try:
                self.api.cleanup(host, self.migration_id)
            except Exception:  # noqa: BLE001
                pass
