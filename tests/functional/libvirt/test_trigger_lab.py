"""An automatic redirect through the libvirt controller: real QEMU, real
bytes.

The shipped ``too_slow`` trigger (same class, same rate meter as in
nova-compute) watches a controller migration src -> a whose destination
link is throttled to 16 Mbit/s downstream; it projects the completion
past the deadline, estimates b (300 Mbit/s, with a relaying what it
holds) clearly faster, and redirects. RAM is compared byte for byte
before the guest resumes on b. What stands in for Nova: the deadline is
given as Nova's formula would compute it (15 s/GiB x 2 GiB), and the
re-pick is "the lab host not used yet".
"""

from __future__ import annotations

import pytest
from oslo_config import cfg

from tests.functional.libvirt.conftest import LIBVIRT_LAB

pytestmark = LIBVIRT_LAB

libvirt = pytest.importorskip("libvirt",
                              reason="libvirt-python is not installed")

from nova_dcmigrate.conf import auto  # noqa: E402
from nova_dcmigrate.triggers import base  # noqa: E402
from nova_dcmigrate.triggers import progress  # noqa: E402
from nova_dcmigrate.triggers import too_slow  # noqa: E402
from nova_dcmigrate.virt.libvirt import trigger_watch  # noqa: E402

LAB_HOSTS = ("src", "a", "b")
LAB_LINK = "300mbit"


def _conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    auto.register_opts(conf)
    conf([], project="lab")
    conf.set_override("too_slow_min_elapsed", 4.0, group="dcmigrate_auto")
    # What the lab's 300 Mbit/s links carry (about 35 MiB/s).
    conf.set_override("too_slow_expected_rate", 30.0,
                      group="dcmigrate_auto")
    conf.set_override("too_slow_redirect_overhead", 2.0,
                      group="dcmigrate_auto")
    return conf


def _pick(destinations: list[str]) -> base.Alternative | None:
    left = [h for h in ("a", "b") if h not in destinations]
    return base.Alternative(left[0]) if left else None


@pytest.mark.timeout(400)
def test_too_slow_redirects_a_throttled_migration(run, lab, hosts):
    lab.set_rate("a", "300mbit/16mbit")
    try:
        r = run()
        conf = _conf()
        watch = trigger_watch.TriggerWatch(
            r.m, [too_slow.TooSlow(conf.dcmigrate_auto)], _pick,
            interval=1.0, window=3.0,
            timeout=progress.nova_timeout(15, 2.0), max_redirects=1)
        r.m.start("a")
        watch.start()
        try:
            assert r.finish_and_check() == "b"
        finally:
            watch.stop()
    finally:
        lab.set_rate("a", "300mbit")
    redirects = [d for d in watch.decisions if d.action == base.REDIRECT]
    assert len(redirects) == 1, watch.decisions
    ev = redirects[0].evidence
    assert ev["candidate"] == "b"
    assert ev["deadline_s"] == 30.0
    assert ev["projected_remaining_s"] == "inf" or \
        ev["elapsed_s"] + ev["projected_remaining_s"] > 30
    assert [a.host.name for a in r.m.attempts] == ["a", "b"]
    st = r.m.status()
    assert st.bytes_relayed.get("a", 0) > 0


@pytest.mark.timeout(300)
def test_too_slow_quiet_on_a_healthy_migration(run):
    r = run()
    conf = _conf()
    watch = trigger_watch.TriggerWatch(
        r.m, [too_slow.TooSlow(conf.dcmigrate_auto)], _pick,
        interval=1.0, window=3.0, timeout=progress.nova_timeout(15, 2.0))
    r.m.start("a")
    watch.start()
    try:
        assert r.finish_and_check() == "a"
    finally:
        watch.stop()
    assert watch.decisions == []
    assert len(r.m.attempts) == 1
