"""Lower bound of the post-redirect time, efficiency, medians, ratios.

After a redirect the new destination needs ``total = S + H`` bytes:

``S`` (source-only)
    what no holder has (pages never sent before, pages changed since);
    only the source can send it, over its upload link.
``H`` (held)
    what an earlier destination (a *holder*) has; either the source or a
    holder can send it.

Whatever the split, no method can finish faster than::

    T_min = max( S / rate_src,
                 (S + H) / (rate_src + rate_old),
                 (S + H) / rate_new_in )

with ``rate_src`` the source's upload rate, ``rate_old`` the sum of the
holders' upload rates and ``rate_new_in`` the new destination's download
rate.  An unshaped link has an infinite rate (its term is 0).

All rates here are in **bytes** per second; the lab configures bit/s.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Iterable, Mapping

#: Names of the three terms of the bound, for reports.
TERMS = ("source upload", "source + holders upload",
         "new destination download")


@dataclasses.dataclass(frozen=True)
class Bound:
    """The bound and what it was computed from."""

    seconds: float
    #: Index into :data:`TERMS` of the term that sets the bound.
    binding: int
    terms: tuple[float, float, float]
    source_only_bytes: int
    held_bytes: int
    rate_src: float
    rate_old: float
    rate_new_in: float

    @property
    def binding_term(self) -> str:
        return TERMS[self.binding]

    @property
    def total_bytes(self) -> int:
        return self.source_only_bytes + self.held_bytes


def bytes_per_s(bits_per_s: int | None) -> float:
    """Lab rate (bit/s, ``None`` unshaped) -> bytes/s (inf unshaped)."""
    return math.inf if bits_per_s is None else bits_per_s / 8.0


def _time(nbytes: float, rate: float) -> float:
    if nbytes <= 0:
        return 0.0
    if rate <= 0:
        raise ValueError("a link rate must be positive, got %r" % rate)
    return 0.0 if math.isinf(rate) else nbytes / rate


def lower_bound(source_only_bytes: int, held_bytes: int, rate_src: float,
                rate_old: float, rate_new_in: float) -> Bound:
    """The bound for one redirect (rates in bytes/s, see module doc).

    :raises ValueError: for negative byte counts or non-positive rates.
    """
    if source_only_bytes < 0 or held_bytes < 0:
        raise ValueError("byte counts cannot be negative")
    total = source_only_bytes + held_bytes
    terms = (_time(source_only_bytes, rate_src),
             _time(total, rate_src + rate_old),
             _time(total, rate_new_in))
    binding = max(range(3), key=lambda i: terms[i])
    return Bound(seconds=terms[binding], binding=binding, terms=terms,
                 source_only_bytes=source_only_bytes, held_bytes=held_bytes,
                 rate_src=rate_src, rate_old=rate_old,
                 rate_new_in=rate_new_in)


def holders_rate(upload_bits: Mapping[str, int | None],
                 holders: Iterable[str]) -> float:
    """Sum of the holders' upload rates in bytes/s (inf if any is
    unshaped, 0 if there is no holder)."""
    return sum((bytes_per_s(upload_bits[h]) for h in holders), 0.0)


def efficiency(bound_s: float | None, measured_s: float | None
               ) -> float | None:
    """``bound / measured`` (1.0: as fast as physically possible)."""
    if bound_s is None or measured_s is None or measured_s <= 0:
        return None
    return bound_s / measured_s


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not ``None``; ``None`` if none."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``; ``None`` if either is missing or the
    reference is not positive."""
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference
