"""The shipped redirect triggers, one input at a time."""

from __future__ import annotations

import math
from typing import Any

from oslo_config import cfg
import pytest

from nova_dcmigrate.conf import auto
from nova_dcmigrate.triggers import base
from nova_dcmigrate.triggers import destination
from nova_dcmigrate.triggers import progress
from nova_dcmigrate.triggers import too_slow

MIB = 1024 * 1024
GIB = 1024 * MIB


@pytest.fixture
def conf() -> cfg.ConfigOpts:
    c = cfg.ConfigOpts()
    auto.register_opts(c)
    c([], project="test")
    return c


class Scheduler:
    """A scheduler view with fixed answers (the Nova one is exercised in
    tests/functional/nova/test_triggers.py)."""

    def __init__(self, fits: bool = True,
                 alt: base.Alternative | None = None,
                 error: bool = False) -> None:
        self.fits = fits
        self.alt = alt
        self.error = error
        self.asked: list[str] = []

    def destination_fits(self) -> bool:
        self.asked.append("fits")
        if self.error:
            raise base.SchedulerViewError(question="fits", reason="down")
        return self.fits

    def alternative(self) -> base.Alternative | None:
        self.asked.append("alternative")
        if self.error:
            raise base.SchedulerViewError(question="alt", reason="down")
        return self.alt


def service(**kw: Any) -> base.DestinationState:
    values: dict[str, Any] = dict(host="dest1", disabled=False,
                                  disabled_reason=None, up=True)
    values.update(kw)
    return base.DestinationState(**values)


def prog(**kw: Any) -> base.Progress:
    values: dict[str, Any] = dict(
        elapsed=60.0, data_total=4 * GIB, data_processed=1 * GIB,
        data_remaining=3 * GIB, memory_total=4 * GIB,
        memory_remaining=3 * GIB, transfer_rate=10 * MIB,
        progress_rate=10 * MIB, peak_transfer_rate=100 * MIB, samples=20,
        nova_timeout=200.0)
    values.update(kw)
    return base.Progress(**values)


def inputs(**kw: Any) -> base.Inputs:
    values: dict[str, Any] = dict(
        instance_uuid="i", migration_uuid="m", source="src",
        destinations=["dest1"], progress=prog(), destination=service(),
        scheduler=Scheduler(), relays=True)
    values.update(kw)
    return base.Inputs(**values)


# -- destination_disabled -----------------------------------------------------

def test_disabled_fires(conf: cfg.ConfigOpts) -> None:
    trig = destination.DestinationDisabled(conf.dcmigrate_auto)
    d = trig.evaluate(inputs(destination=service(
        disabled=True, disabled_reason="maintenance")))
    assert d is not None and d.action == base.REDIRECT
    assert d.evidence["state"] == "disabled"
    assert "maintenance" in d.summary


def test_disabled_silent_for_healthy(conf: cfg.ConfigOpts) -> None:
    trig = destination.DestinationDisabled(conf.dcmigrate_auto)
    assert trig.evaluate(inputs()) is None


def test_down_fires_unless_turned_off(conf: cfg.ConfigOpts) -> None:
    trig = destination.DestinationDisabled(conf.dcmigrate_auto)
    down = inputs(destination=service(up=False))
    d = trig.evaluate(down)
    assert d is not None and d.evidence["state"] == "down"
    conf.set_override("destination_disabled_when_down", False,
                      group="dcmigrate_auto")
    assert trig.evaluate(down) is None


@pytest.mark.parametrize("dest", [None, service(host="other")])
def test_disabled_bad_inputs(conf: cfg.ConfigOpts,
                             dest: base.DestinationState | None) -> None:
    trig = destination.DestinationDisabled(conf.dcmigrate_auto)
    with pytest.raises(base.TriggerInputError) as err:
        trig.evaluate(inputs(destination=dest))
    assert err.value.kwargs["trigger"] == "destination_disabled"


# -- destination_unfit --------------------------------------------------------

def test_unfit_needs_confirmations(conf: cfg.ConfigOpts) -> None:
    trig = destination.DestinationUnfit(conf.dcmigrate_auto)
    memo: dict[str, Any] = {}
    unfit = Scheduler(fits=False)
    assert trig.evaluate(inputs(scheduler=unfit, memo=memo)) is None
    d = trig.evaluate(inputs(scheduler=unfit, memo=memo))
    assert d is not None and d.evidence["failed_checks"] == 2


def test_unfit_resets_when_fit_again(conf: cfg.ConfigOpts) -> None:
    conf.set_override("destination_unfit_confirmations", 2,
                      group="dcmigrate_auto")
    trig = destination.DestinationUnfit(conf.dcmigrate_auto)
    memo: dict[str, Any] = {}
    assert trig.evaluate(inputs(scheduler=Scheduler(False), memo=memo)) \
        is None
    assert trig.evaluate(inputs(scheduler=Scheduler(True), memo=memo)) \
        is None
    assert trig.evaluate(inputs(scheduler=Scheduler(False), memo=memo)) \
        is None


def test_unfit_threshold_one(conf: cfg.ConfigOpts) -> None:
    conf.set_override("destination_unfit_confirmations", 1,
                      group="dcmigrate_auto")
    trig = destination.DestinationUnfit(conf.dcmigrate_auto)
    assert trig.evaluate(inputs(scheduler=Scheduler(False))) is not None


def test_unfit_scheduler_error_propagates(conf: cfg.ConfigOpts) -> None:
    trig = destination.DestinationUnfit(conf.dcmigrate_auto)
    with pytest.raises(base.SchedulerViewError):
        trig.evaluate(inputs(scheduler=Scheduler(error=True)))


# -- too_slow -----------------------------------------------------------------

def slow_case(conf: cfg.ConfigOpts, **kw: Any) -> base.Decision | None:
    trig = too_slow.TooSlow(conf.dcmigrate_auto)
    return trig.evaluate(inputs(**kw))


def test_too_slow_fires(conf: cfg.ConfigOpts) -> None:
    sched = Scheduler(alt=base.Alternative("dest2"))
    # 3 GiB left at 10 MiB/s = 307 s > deadline 200 s; at the peak rate
    # of 100 MiB/s with relays a redirect takes ~5 + 30 s.
    d = slow_case(conf, scheduler=sched)
    assert d is not None and d.action == base.REDIRECT
    assert d.candidate == "dest2"
    assert d.evidence["projected_remaining_s"] == pytest.approx(307.2)
    assert d.evidence["candidate_estimate_s"] < 60


def test_too_slow_healthy(conf: cfg.ConfigOpts) -> None:
    sched = Scheduler(alt=base.Alternative("dest2"))
    d = slow_case(conf, scheduler=sched, progress=prog(
        transfer_rate=100 * MIB, progress_rate=100 * MIB))
    assert d is None
    # The scheduler is not even asked while on time.
    assert sched.asked == []


def test_too_slow_not_clearly_sooner(conf: cfg.ConfigOpts) -> None:
    conf.set_override("too_slow_min_speedup", 20.0, group="dcmigrate_auto")
    d = slow_case(conf, scheduler=Scheduler(alt=base.Alternative("dest2")))
    assert d is not None and d.action == base.CONTINUE


def test_too_slow_no_alternative(conf: cfg.ConfigOpts) -> None:
    d = slow_case(conf, scheduler=Scheduler(alt=None))
    assert d is not None and d.candidate is None


def test_too_slow_deadline_override_and_disabled(conf: cfg.ConfigOpts) \
        -> None:
    alt = Scheduler(alt=base.Alternative("dest2"))
    conf.set_override("too_slow_deadline", 1000.0, group="dcmigrate_auto")
    assert slow_case(conf, scheduler=alt) is None
    conf.set_override("too_slow_deadline", 0.0, group="dcmigrate_auto")
    assert slow_case(conf, scheduler=alt,
                     progress=prog(nova_timeout=None)) is None


def test_too_slow_waits_for_min_elapsed(conf: cfg.ConfigOpts) -> None:
    alt = Scheduler(alt=base.Alternative("dest2"))
    assert slow_case(conf, scheduler=alt, progress=prog(elapsed=5.0)) \
        is None
    assert slow_case(conf, scheduler=alt, progress=prog(samples=1)) is None


def test_too_slow_not_converging(conf: cfg.ConfigOpts) -> None:
    d = slow_case(conf, scheduler=Scheduler(alt=base.Alternative("d2")),
                  progress=prog(progress_rate=0.0))
    assert d is not None and d.evidence["projected_remaining_s"] == "inf"


def test_too_slow_expected_rate(conf: cfg.ConfigOpts) -> None:
    # Never faster than now, nothing configured: no better estimate.
    flat = prog(peak_transfer_rate=10 * MIB)
    alt = Scheduler(alt=base.Alternative("dest2"))
    d = slow_case(conf, scheduler=alt, progress=flat)
    assert d is not None and d.action == base.CONTINUE
    conf.set_override("too_slow_expected_rate", 200.0,
                      group="dcmigrate_auto")
    d = slow_case(conf, scheduler=alt, progress=flat)
    assert d is not None and d.action == base.REDIRECT


def test_too_slow_bad_inputs(conf: cfg.ConfigOpts) -> None:
    with pytest.raises(base.TriggerInputError):
        slow_case(conf, progress=None)


def test_estimate_without_relays_resends_everything() -> None:
    p = prog()
    with_relays = too_slow.redirect_estimate(p, 100 * MIB, True, 0)
    without = too_slow.redirect_estimate(p, 100 * MIB, False, 0)
    assert without == pytest.approx(4 * GIB / (100 * MIB))
    assert with_relays < without
    assert math.isinf(too_slow.redirect_estimate(
        prog(transfer_rate=50 * MIB, progress_rate=0.0), 40 * MIB, True,
        0))


# -- progress -----------------------------------------------------------------

class Job:
    def __init__(self, processed: int, remaining: int) -> None:
        self.data_total = self.memory_total = 4 * GIB
        self.data_processed = processed
        self.data_remaining = self.memory_remaining = remaining


def test_rate_meter_window_and_peak() -> None:
    meter = progress.RateMeter(0.0, window=10.0, timeout=1600.0)
    assert meter.progress() is None
    for t in range(0, 21):
        # 100 MiB/s for 10 s, then 10 MiB/s with 5 MiB/s dirtied again.
        if t <= 10:
            processed = t * 100 * MIB
            remaining = 4 * GIB - processed
        else:
            processed = 1000 * MIB + (t - 10) * 10 * MIB
            remaining = 4 * GIB - 1000 * MIB - (t - 10) * 5 * MIB
        meter.add(progress.sample_from_job(float(t), Job(processed,
                                                         remaining)))
        p = meter.progress()
    assert p is not None
    assert p.transfer_rate == pytest.approx(10 * MIB)
    assert p.progress_rate == pytest.approx(5 * MIB)
    assert p.dirty_rate == pytest.approx(5 * MIB)
    assert p.peak_transfer_rate == pytest.approx(100 * MIB)
    assert p.elapsed == 20.0 and p.nova_timeout == 1600.0


def test_sample_rejects_bad_counters() -> None:
    job = Job(1, 2)
    job.data_remaining = -1
    with pytest.raises(base.TriggerInputError):
        progress.sample_from_job(0.0, job)
    del job.data_remaining
    with pytest.raises(base.TriggerInputError):
        progress.sample_from_job(0.0, job)


def test_nova_timeout() -> None:
    assert progress.nova_timeout(800, 2.0) == 1600.0
    assert progress.nova_timeout(0, 2.0) is None


def test_entry_points_registered() -> None:
    from stevedore import named
    mgr = named.NamedExtensionManager(
        base.NAMESPACE, names=["destination_disabled", "destination_unfit",
                               "too_slow"], invoke_on_load=False)
    assert sorted(mgr.names()) == ["destination_disabled",
                                   "destination_unfit", "too_slow"]
