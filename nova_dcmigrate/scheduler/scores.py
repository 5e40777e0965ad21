"""The arithmetic of DCMigrateWeigher, kept free of Nova.

Each component scores one candidate host between 0 and 1 (higher is
better); :func:`combine` multiplies them by their multipliers and adds them
up. Components are absolute where an absolute scale exists (holding pages,
load against Nova's own limits) and relative to the best candidate for
link rates, which have no natural maximum. Living apart from
:mod:`.weights` lets the unit tests check it without Nova installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from collections.abc import Set
import dataclasses


@dataclasses.dataclass(frozen=True)
class Multipliers:
    """How much each component counts (``[dcmigrate_scheduler]``)."""

    holder: float
    link_rate: float
    load: float


@dataclasses.dataclass(frozen=True)
class HostLoad:
    """The load figures nova-scheduler keeps for a host (``HostState``)."""

    #: I/O heavy operations in progress (builds, migrations, ...).
    num_io_ops: int
    vcpus_used: float
    vcpus_total: float
    #: None until the host reported it.
    cpu_allocation_ratio: float | None


def holder_score(host: str, holders: Set[str]) -> float:
    """Return 1 if ``host`` still stores pages of the guest, else 0."""
    return 1.0 if host in holders else 0.0


def link_rate_scores(hosts: Sequence[str],
                     rates: Mapping[str, float]) -> list[float]:
    """Score each host's measured link rate against the best candidate.

    :param hosts: the candidate hosts, in order.
    :param rates: measured rates by host; hosts may be missing.
    :returns: ``rate / best rate`` per host, in the order of ``hosts``; 0
        for a host without a measurement, and 0 for all when no candidate
        has a positive rate.
    """
    best = max((rates.get(h, 0.0) for h in hosts), default=0.0)
    if best <= 0:
        return [0.0] * len(hosts)
    return [rates.get(h, 0.0) / best for h in hosts]


def _fraction(used: float, limit: float) -> float:
    if limit <= 0:
        return 0.0
    return min(max(used / limit, 0.0), 1.0)


def load_score(load: HostLoad, max_io_ops_per_host: int) -> float:
    """Score how lightly loaded a host is.

    :param load: the host's figures.
    :param max_io_ops_per_host: Nova's ``[filter_scheduler]
        max_io_ops_per_host``, the I/O operations at which IoOpsFilter
        considers a host full.
    :returns: 1 minus the mean of the I/O load (``num_io_ops /
        max_io_ops_per_host``) and the vCPU load (``vcpus_used /
        (vcpus_total * cpu_allocation_ratio)``), each clamped to [0, 1]; a
        load with an unknown or zero limit counts as 0.
    """
    io = _fraction(load.num_io_ops, max_io_ops_per_host)
    ratio = load.cpu_allocation_ratio or 1.0
    cpu = _fraction(load.vcpus_used, load.vcpus_total * ratio)
    return 1.0 - (io + cpu) / 2.0


def combine(holder: float, link_rate: float, load: float,
            multipliers: Multipliers) -> float:
    """Return the host's weight: each score times its multiplier, summed."""
    return (multipliers.holder * holder
            + multipliers.link_rate * link_rate
            + multipliers.load * load)
