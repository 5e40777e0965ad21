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

``agents`` is an :class:`nova_dcmigrate.agent.rpcapi.AgentAPI` (or anything
with its ``get_status(host, migration_id)``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: Attempt states after which an agent does nothing more for an attempt.
FINAL_STATES = frozenset({"failed", "aborted", "completed"})
#: Seconds between two status polls while waiting for relays.
POLL_S = 0.05


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

    Counted: holders flagged ``failed`` in the destination's relay status,
    and holders named in the attempt's error.  An unreachable destination
    agent yields an empty set (nothing is known to have failed).
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
        err = a.get("error") or ""
        dead |= {h for h in holders if "holder %s" % h in err}
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
                 timeout: float = 3600.0) -> RelayWait:
    """Poll the new destination until the relays of attempt ``number`` are
    in, the attempt ended, or ``timeout`` passed.

    Why: the controllers hold the switchover back (a 1 ms downtime limit)
    while holders relay, so the relay backlog never lands in the guest's
    downtime; this says when to restore the real limit.  Status errors
    (agent busy or restarting) are retried until the deadline.
    """
    deadline = time.monotonic() + timeout
    rate = 0.0
    while running() and time.monotonic() < deadline:
        try:
            status = agents.get_status(dst_host, migration_id)
        except Exception:  # noqa: BLE001 - keep polling
            time.sleep(0.2)
            continue
        for a in attempt_entries(status, number):
            red = a.get("redirect") or {}
            rate = float(red.get("source_rate") or rate)
            if red.get("relay_done"):
                return RelayWait(True, False, rate)
            if a.get("state") in FINAL_STATES:
                return RelayWait(False, True, rate)
        time.sleep(POLL_S)
    return RelayWait(False, not running(), rate)
