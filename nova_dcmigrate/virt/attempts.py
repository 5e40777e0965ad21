"""Attempt bookkeeping shared by the redirect controllers.

A redirectable migration is a sequence of attempts, one per destination
(or per retry).  Both controllers -- the QMP lab controller
(:mod:`nova_dcmigrate.lab.redirect`) and the libvirt one
(:mod:`nova_dcmigrate.virt.libvirt.controller`) -- need the same three
answers from that history and from the agents' status, so they live here,
once, with no libvirt or QEMU import:

* which earlier destinations may relay their pages to a new attempt
  (:func:`holders_for`);
* when the new destination has every relayed page, so the switchover
  gate can be lifted (:func:`wait_relayed`);
* which holders failed an attempt, so it can be retried without them
  (:func:`failed_holders`).

The libvirt controller and the Nova driver's agent transport also share
the per-attempt agent calls: :func:`prepare_agents`, :func:`abort_agents`,
and the link-rate bookkeeping (:func:`measured_link_rate`,
:func:`avail_switchover_mib`).

``agents`` is an :class:`nova_dcmigrate.agent.rpcapi.AgentAPI` (or anything
with its ``get_status(host, migration_id)``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from oslo_log import log as logging

from nova_dcmigrate.exception import DcmigrateError

LOG = logging.getLogger(__name__)
MIB = 1024 * 1024
#: Attempt states after which an agent does nothing more for an attempt.
FINAL_STATES = frozenset({"failed", "aborted", "completed"})
#: Seconds before the first status poll while waiting for relays ...
POLL_S = 0.05
#: ... and the longest wait between two polls (backoff).
POLL_MAX_S = 1.0
#: The longest single ``wait_relayed`` call to an agent of RPC 1.5.
RELAY_WAIT_S = 5.0


def holders_for(destinations: Iterable[str], host: str,
                dead: Iterable[str] = ()) -> list[str]:
    """Earlier destinations that may relay pages to an attempt to ``host``.

    :param destinations: destination host of every attempt so far, oldest
        first.
    :param dead: holders known to have failed (never asked again).
    :returns: each still-alive earlier destination once, newest first;
        never ``host`` itself (its agent reuses its own store unasked).
    """
    dead = set(dead)
    seen: list[str] = []
    for h in reversed(list(destinations)):
        if h != host and h not in seen and h not in dead:
            seen.append(h)
    return seen


def attempt_entries(status: Mapping[str, Any],
                    number: int) -> list[Mapping[str, Any]]:
    """The entries of attempt ``number`` in one agent's ``get_status``."""
    return [a for a in status.get("attempts", []) or []
            if a.get("attempt") == number]


def failed_holders(agents: Any, dst_host: str, migration_id: str,
                   number: int, holders: Iterable[str]) -> set[str]:
    """Holders the destination of attempt ``number`` saw fail.

    Counted: holders flagged ``failed`` in the destination's relay status
    (the destination flags every holder it gave up on, whatever the
    reason).  An unreachable destination agent yields an empty set
    (nothing is known to have failed).  ``holders`` is kept for the
    callers' signature; the status names the failed ones.
    """
    try:
        status = agents.get_status(dst_host, migration_id)
    except Exception:  # noqa: BLE001 - the agent may be gone
        return set()
    dead: set[str] = set()
    for a in attempt_entries(status, number):
        for host, h in (a.get("redirect") or {}).get("holders", {}).items():
            if h.get("failed"):
                dead.add(host)
    return dead


@dataclasses.dataclass
class RelayWait:
    """How :func:`wait_relayed` ended."""

    #: The destination reported every relayed page in.
    relayed: bool
    #: The attempt ended (on the agent, or ``running()`` turned false).
    ended: bool
    #: Bytes/s the source link really moved for the attempt, as the
    #: destination measured it (0.0: not reported).
    source_rate: float


def wait_relayed(agents: Any, dst_host: str, migration_id: str,
                 number: int, running: Callable[[], bool], *,
                 timeout: float = 3600.0,
                 stop: threading.Event | None = None) -> RelayWait:
    """Wait until the new destination has the relays of attempt ``number``
    in, the attempt ended, or ``timeout`` passed.

    Why: the controllers hold the switchover back (a 1 ms downtime limit)
    while holders relay, so the relay backlog never lands in the guest's
    downtime; this says when to restore the real limit.  Agents of RPC 1.5
    answer the moment the last relayed page is in (``wait_relayed``, one
    call per :data:`RELAY_WAIT_S` at most).  Older agents are polled from
    :data:`POLL_S`, backing off to :data:`POLL_MAX_S` (a long relay is not
    polled 20 times a second), which can see the end up to a second late.
    After an error (an older agent, or one busy or restarting) it polls,
    backing off, until the deadline.  Setting ``stop`` (the attempt
    ended) wakes the wait at once between calls.
    """
    deadline = time.monotonic() + timeout
    rate = 0.0
    delay = POLL_S
    wake = stop if stop is not None else threading.Event()
    long_poll = _supports(agents, "supports_relay_wait")
    while running() and time.monotonic() < deadline:
        asked = time.monotonic()
        wait_s = min(RELAY_WAIT_S, max(0.0, deadline - asked))
        waited = False
        try:
            if long_poll:
                status = agents.wait_relayed(dst_host, migration_id, number,
                                             wait_s)
                # An answer before half the wait: the agent had nothing
                # to wait on (no such session yet); back off as a poll.
                waited = time.monotonic() - asked >= wait_s / 2
            else:
                status = agents.get_status(dst_host, migration_id)
        except Exception:  # noqa: BLE001 - keep trying
            # Without a version cap the client cannot tell an agent
            # older than 1.5; polling works with every agent.
            status, long_poll = {}, False
        for a in attempt_entries(status, number):
            red = a.get("redirect") or {}
            rate = float(red.get("source_rate") or rate)
            if red.get("relay_done"):
                return RelayWait(True, False, rate)
            if a.get("state") in FINAL_STATES:
                return RelayWait(False, True, rate)
        if waited:
            if wake.is_set():
                break
            continue
        wake.wait(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(POLL_MAX_S, delay * 1.5)
    return RelayWait(False, not running(), rate)


def _supports(agents: Any, check_name: str) -> bool:
    """An optional capability of ``agents`` (False if unknown)."""
    check = getattr(agents, check_name, None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # noqa: BLE001 - unknown: without it
        return False


class SocketPathMismatch(DcmigrateError):
    msg_fmt = ("Migration %(migration_id)s: the source agent listens on "
               "%(source)s but the destination QEMU would listen on "
               "%(dest)s; [dcmigrate_agent] socket_dir must be the same on "
               "every host")


def prepare_agents(agents: Any, migration_id: str, secret: str,
                   number: int, source: str, dest: str, dest_address: str,
                   dest_port: int, holders: Sequence[Mapping[str, Any]],
                   split: bool, source_rate: float | None,
                   tls: bool = False,
                   guest_memory: int | None = None) -> str:
    """Prepare the source and destination agents of attempt ``number``.

    The destination agent creates the directory its QEMU will bind the
    attempt's UNIX socket in, the source agent listens on the same path on
    its host; libvirt gets ``unix://<path>`` as the migration URI.  If one
    side refuses, the other's session is aborted again (only attempt
    ``number``'s where the agents can: another attempt may still run).

    Also called *before* the running attempt is stopped (see
    :func:`can_prepare_ahead`): the new destination's agent is then known
    to be ready before anything of the running attempt is given up, and
    its preparation overlaps the abort.

    :param tls: the agents' links must use TLS (they refuse the prepare
        when their ``peer_tls`` is off); passed only when set.
    :param guest_memory: the domain's memory in bytes (the destination
        refuses a stream announcing more RAM than that allows).
    :returns: the socket path.
    :raises SocketPathMismatch: the agents' socket_dir differ.
    :raises: whatever the agents' ``prepare_*`` raised.
    """
    extra: dict[str, Any] = {"tls": True} if tls else {}
    dst_extra = dict(extra)
    if guest_memory is not None:
        dst_extra["guest_memory"] = int(guest_memory)
    dst = agents.prepare_destination(dest, migration_id, secret, number,
                                     list(holders), split, source_rate,
                                     **dst_extra)
    try:
        src = agents.prepare_source(source, migration_id, secret,
                                    dest_address, dest_port, number,
                                    **extra)
        if src["socket"] != dst["socket"]:
            raise SocketPathMismatch(migration_id=migration_id,
                                     source=src["socket"],
                                     dest=dst["socket"])
    except Exception:
        abort_agents(agents, migration_id, [source, dest], attempt=number)
        raise
    return str(src["socket"])


def can_prepare_ahead(agents: Any) -> bool:
    """Whether the next attempt may be prepared before the running one is
    stopped: only if the running attempt's sessions can then be aborted
    alone (agent RPC 1.4), not the prepared ones with them."""
    return _supports(agents, "supports_attempt_abort")


def abort_agents(agents: Any, migration_id: str,
                 hosts: Iterable[str], attempt: int | None = None) -> None:
    """End the migration's sessions on ``hosts``; page stores stay.

    With ``attempt``, only that attempt's sessions where the agents can
    (:func:`can_prepare_ahead`), all of them otherwise -- the old agents'
    behaviour, and then nothing was prepared ahead.  An agent that cannot
    be reached is logged and skipped: it may be the reason the attempt
    ended.
    """
    extra: dict[str, Any] = {}
    if attempt is not None and can_prepare_ahead(agents):
        extra["attempt"] = attempt
    for host in hosts:
        try:
            agents.abort(host, migration_id, "attempt ended", **extra)
        except Exception as err:  # noqa: BLE001 - the agent may be gone
            LOG.warning("migration %(mid)s: abort on %(h)s: %(err)s",
                        {"mid": migration_id, "h": host, "err": err})


def measured_link_rate(had_holders: bool, relay_source_rate: float,
                       job_stats: Callable[[], Mapping[str, Any]]
                       ) -> float | None:
    """Bytes/s the source link really moved in an attempt, if known.

    With holders the source dropped pages at local speed, so only the
    rate the new destination measured counts; without, libvirt's
    ``memory_bps`` is the link's.  ``job_stats`` errors mean no measure.
    """
    if had_holders:
        return relay_source_rate if relay_source_rate > 0 else None
    try:
        bps = job_stats().get("memory_bps", 0)
    except Exception:  # noqa: BLE001 - no job, no measure
        return None
    return float(bps) if bps else None


def avail_switchover_mib(rate: float) -> int:
    """libvirt's ``bandwidth.avail.switchover`` (MiB/s) for ``rate``
    bytes/s, at least 1."""
    return max(1, int(rate / MIB))
