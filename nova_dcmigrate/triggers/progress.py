"""Transfer and progress rates of a migration attempt, from job polls.

libvirt's job statistics give cumulative counters; Nova's monitor polls
them every 0.5 s. A :class:`RateMeter` keeps the samples of one attempt
for ``window`` seconds and turns them into a
:class:`~nova_dcmigrate.triggers.base.Progress`.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from nova_dcmigrate.triggers import base

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float
    data_total: int
    data_processed: int
    data_remaining: int
    memory_total: int
    memory_remaining: int


def sample_from_job(at: float, info: Any) -> Sample:
    """Read a sample from a libvirt ``JobInfo`` (Nova's or the
    controller's job dict turned into attributes).

    :raises TriggerInputError: a counter is missing or negative.
    """
    values = {}
    for field in ("data_total", "data_processed", "data_remaining",
                  "memory_total", "memory_remaining"):
        value = getattr(info, field, None)
        if not isinstance(value, int) or value < 0:
            raise base.TriggerInputError(
                trigger="(progress)",
                reason="job statistic %s is %r" % (field, value))
        values[field] = value
    return Sample(at=at, **values)


def nova_timeout(completion_timeout: float, data_gb: float) -> float | None:
    """When Nova's timeout action fires, in seconds after the attempt
    started (``_live_migration_monitor``: the option times the data GiB);
    None when the option is 0 (disabled)."""
    if completion_timeout <= 0:
        return None
    return float(int(completion_timeout * data_gb))


class RateMeter:
    """Samples of one attempt; not thread-safe (one writer: the monitor
    thread; readers get a :meth:`progress` snapshot)."""

    def __init__(self, started: float, window: float,
                 timeout: float | None) -> None:
        self.started = started
        self.window = window
        self.timeout = timeout
        self._samples: collections.deque[Sample] = collections.deque()
        self.peak_transfer_rate = 0.0
        self.count = 0

    def add(self, sample: Sample) -> None:
        """Add a sample; ones older than the window are dropped."""
        if self._samples and sample.at <= self._samples[-1].at:
            return
        self._samples.append(sample)
        self.count += 1
        while (len(self._samples) > 2 and
               sample.at - self._samples[1].at >= self.window):
            self._samples.popleft()
        self.peak_transfer_rate = max(self.peak_transfer_rate,
                                      self._rates()[0])

    def _rates(self) -> tuple[float, float]:
        # (transfer, progress) in bytes/s over the samples kept.
        first, last = self._samples[0], self._samples[-1]
        span = last.at - first.at
        if span <= 0:
            return 0.0, 0.0
        return (max(0.0, (last.data_processed - first.data_processed) /
                    span),
                (first.data_remaining - last.data_remaining) / span)

    def progress(self) -> base.Progress | None:
        """The rates now, or None before the first sample."""
        if not self._samples:
            return None
        last = self._samples[-1]
        transfer, progress_rate = self._rates()
        return base.Progress(
            elapsed=last.at - self.started,
            data_total=last.data_total,
            data_processed=last.data_processed,
            data_remaining=last.data_remaining,
            memory_total=last.memory_total,
            memory_remaining=last.memory_remaining,
            transfer_rate=transfer, progress_rate=progress_rate,
            peak_transfer_rate=self.peak_transfer_rate,
            samples=len(self._samples), nova_timeout=self.timeout)
