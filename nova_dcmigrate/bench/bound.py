"""Lower bound of the post-redirect time, link utilisation, medians.

After a redirect the new destination needs ``total = S + H`` bytes:

``S`` (source-only)
    what no holder has (pages never sent before, pages changed since);
    only the source can send it, over its upload link.
``H`` (held)
    what an earlier destination (a *holder*) has; either the source or a
    holder can send it.

The benchmark's bound (:func:`scenario_bound`) counts them in pages by
*final* content: ``S`` = non-zero pages whose final content no holder had
at the redirect, ``H`` = the other non-zero pages (minus those the new
destination held itself), each one page record on the wire.  That is a
property of the scenario, not of how a method moved the bytes: a method
that sends a page twice does not raise it.  :func:`lower_bound` applied
to a run's *own* byte counters gives the time its bytes needed at the
link rates; that over the measured time is the run's link utilisation.

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


#: Wire bytes of one page record (8-byte header + 4 KiB).
PAGE_RECORD_BYTES = 4096 + 8


def scenario_bound(source_only_pages: int, held_pages: int,
                   rate_src: float, rate_old: float,
                   rate_new_in: float) -> Bound:
    """The bound from page counts by final content (see module doc).

    :raises ValueError: for negative counts or non-positive rates.
    """
    return lower_bound(source_only_pages * PAGE_RECORD_BYTES,
                       held_pages * PAGE_RECORD_BYTES, rate_src, rate_old,
                       rate_new_in)


def link_utilisation(own_bytes_s: float | None, measured_s: float | None
                     ) -> float | None:
    """``own-bytes time / measured``: how busy the links were kept with
    what the run chose to send (1.0: no idle link time).  Not a measure
    of how close to the best possible a method is (that is the scenario
    bound over the measured time)."""
    if own_bytes_s is None or measured_s is None or measured_s <= 0:
        return None
    return own_bytes_s / measured_s


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
