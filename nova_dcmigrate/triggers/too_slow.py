"""The ``too_slow`` trigger: the migration will not finish in time, and
a re-picked host would finish clearly sooner.

Model (all rates measured over ``[dcmigrate_auto] rate_window``):

* the running attempt needs ``data_remaining / progress_rate`` more
  seconds (infinite when it does not converge);
* its deadline is ``too_slow_deadline`` or, by default, the moment Nova's
  own timeout action would fire for this attempt;
* a redirected attempt to the re-picked host costs
  ``too_slow_redirect_overhead`` seconds, then moves what the new host
  lacks. The source sends at ``r`` (the candidate's known link rate,
  else ``too_slow_expected_rate``, else the highest rate this attempt
  reached), minus what the guest dirties again. With relays (agents
  transport) the earlier destinations send what they hold (``memory_total
  - memory_remaining``) in parallel, at the rate the current destination
  was receiving; without relays everything is sent again.

It fires only if the projection passes the deadline and the redirected
estimate times ``too_slow_min_speedup`` is still below the projection.
"""

from __future__ import annotations

import math
from typing import Any

from nova_dcmigrate.triggers import base

MIB = 1024 * 1024


def redirect_estimate(progress: base.Progress, source_rate: float,
                      relays: bool, overhead: float) -> float:
    """Seconds a redirected attempt is estimated to take.

    :param source_rate: bytes/s from the source to the new host.
    :param relays: whether holders relay what they have.
    :param overhead: seconds before the new attempt moves memory.
    """
    dirty = progress.dirty_rate
    net_source = source_rate - dirty
    if net_source <= 0:
        return math.inf
    if not relays:
        return overhead + progress.data_total / net_source
    held = max(0, progress.memory_total - progress.memory_remaining)
    remaining = progress.data_remaining
    together = net_source + progress.transfer_rate
    move = max((remaining + held) / together, remaining / net_source)
    return overhead + move


class TooSlow(base.RedirectTrigger):
    """Fires when the projected completion passes the deadline and a
    redirect is estimated to finish clearly sooner."""

    name = "too_slow"

    def evaluate(self, inputs: base.Inputs) -> base.Decision | None:
        p = inputs.progress
        if p is None:
            raise base.TriggerInputError(
                trigger=self.name, reason="no progress measured yet")
        if p.samples < 2 or p.elapsed < self.conf.too_slow_min_elapsed:
            return None
        deadline = self.conf.too_slow_deadline or p.nova_timeout
        if not deadline:
            return None
        left = p.projected_remaining
        if p.elapsed + left <= deadline:
            return None
        evidence: dict[str, Any] = {
            "elapsed_s": round(p.elapsed, 1),
            "deadline_s": round(deadline, 1),
            "projected_remaining_s": _num(left),
            "data_remaining": p.data_remaining,
            "transfer_rate": round(p.transfer_rate),
            "progress_rate": round(p.progress_rate),
            "peak_transfer_rate": round(p.peak_transfer_rate),
        }
        alt = inputs.scheduler.alternative()
        if alt is None:
            # The monitor records this as "nothing better".
            return base.Decision.redirect_to_repick(
                self.name, "projected to finish %s s after its deadline"
                % _num(p.elapsed + left - deadline), evidence)
        rate = (alt.link_rate or self.conf.too_slow_expected_rate * MIB
                or p.peak_transfer_rate)
        estimate = redirect_estimate(p, rate, inputs.relays,
                                     self.conf.too_slow_redirect_overhead)
        evidence.update(candidate=alt.host, candidate_rate=round(rate),
                        candidate_estimate_s=_num(estimate),
                        relays=inputs.relays)
        if estimate * self.conf.too_slow_min_speedup > left:
            return base.Decision.keep_going(
                self.name,
                "projected %s s left (deadline passed) but a redirect to "
                "%s is estimated at %s s: not clearly sooner"
                % (_num(left), alt.host, _num(estimate)), evidence)
        return base.Decision.redirect_to_repick(
            self.name,
            "projected %s s left, deadline %s s after start passed; %s "
            "estimated at %s s" % (_num(left), round(deadline), alt.host,
                                   _num(estimate)),
            evidence, candidate=alt.host)


def _num(value: float) -> float | str:
    # JSON has no infinity.
    return "inf" if math.isinf(value) else round(value, 1)
