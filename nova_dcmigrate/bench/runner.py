"""The run loop: one lab, agents, and a fresh guest per method and repeat.

For every run: boot a guest on ``src`` (same memory and dirtying each
time, so runs are independent), let it dirty for ``settle`` seconds,
migrate it with the method (:mod:`methods`) while the link sampler
records every host's throughput, then compare source and destination RAM
byte for byte, resume the destination and wait for the guest to print
that it is alive.  A run whose RAM differs, or that fails, is an error
(recorded, and the command exits non-zero), and the next run goes on.

Progress fractions need the size of one first pass.  It is measured once
per invocation ("calibration"), on the first booted guest: its RAM is
dumped and its non-zero pages counted; a first pass costs one page record
(4096 + 8 bytes) per non-zero page and 9 bytes per zero page (QEMU's
zero-page record).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
import platform
import random
import subprocess
import time
from typing import Any, Callable

from oslo_log import log as logging

from nova_dcmigrate.bench import agent_memory
from nova_dcmigrate.bench import machine
from nova_dcmigrate.bench import methods as meth
from nova_dcmigrate.bench import report
from nova_dcmigrate.bench.linkstats import LinkSampler
from nova_dcmigrate.bench.linkstats import Series
from nova_dcmigrate.bench.options import AGENT_METHODS
from nova_dcmigrate.bench.options import BenchConfig
from nova_dcmigrate.bench.progress import ProgressView
from nova_dcmigrate.lab import agents as lab_agents
from nova_dcmigrate.lab import image as lab_image
from nova_dcmigrate.lab import qemu
from nova_dcmigrate.lab import rabbit
from nova_dcmigrate.lab import ramcheck
from nova_dcmigrate.lab import topology

LOG = logging.getLogger(__name__)

PAGE = 4096
PAGE_RECORD = PAGE + 8
ZERO_RECORD = 9


@dataclasses.dataclass(frozen=True)
class Calibration:
    nonzero_pages: int
    zero_pages: int
    #: Estimated bytes of one full first pass.
    first_pass_bytes: int
    seconds: float


def count_pages(data: bytes) -> tuple[int, int]:
    """(non-zero, zero) 4 KiB pages of a RAM dump."""
    pages = len(data) // PAGE
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with matplotlib
        zero = bytes(PAGE)
        nonzero = sum(1 for i in range(pages)
                      if data[i * PAGE:(i + 1) * PAGE] != zero)
    else:
        arr = np.frombuffer(data[:pages * PAGE], dtype=np.uint64)
        nonzero = int(arr.reshape(pages, PAGE // 8).any(axis=1).sum())
    return nonzero, pages - nonzero


def first_pass_bytes(nonzero: int, zero: int) -> int:
    return nonzero * PAGE_RECORD + zero * ZERO_RECORD


def calibrate(read_ram: Callable[[], bytes]) -> Calibration:
    """Estimate the bytes of one first pass from the guest's RAM."""
    started = time.monotonic()
    nonzero, zero = count_pages(read_ram())
    cal = Calibration(nonzero, zero, first_pass_bytes(nonzero, zero),
                      time.monotonic() - started)
    LOG.info("calibration: %d non-zero pages, first pass ~%.1f MB",
             nonzero, cal.first_pass_bytes / 1e6)
    return cal


def run_order(cfg: BenchConfig) -> list[tuple[int, str]]:
    """(repeat, method) in execution order: every method once per
    repeat, shuffled with ``--seed`` if given."""
    rng = random.Random(cfg.seed) if cfg.seed is not None else None
    order = []
    for rep in range(1, cfg.repeat + 1):
        methods = list(cfg.methods)
        if rng is not None:
            rng.shuffle(methods)
        order += [(rep, m) for m in methods]
    return order


class QmpSide:
    """``--via qmp``: the guest is a QEMU process on ``src`` driven over
    QMP; destinations are QEMU processes the drivers start."""

    def __init__(self, cfg: BenchConfig, lab: topology.Lab,
                 image: lab_image.GuestImage) -> None:
        self.cfg = cfg
        self.lab = lab
        self.image = image
        self.guest: qemu.QemuGuest | None = None

    def boot(self) -> None:
        cfg = self.cfg
        self.guest = qemu.QemuGuest.start(
            self.lab, "src", self.image, memory_mib=cfg.memory_mib,
            dirty_mib=cfg.dirty_mib, dirty_rate=cfg.dirty_rate)
        self.guest.wait_booted(cfg.boot_timeout_s)

    def read_ram(self) -> bytes:
        guest = self.guest
        assert guest is not None
        dump = self.lab.workdir / ("%s.calibration.ram" % guest.name)
        try:
            guest.pmemsave(dump, guest.memory_bytes)
            return dump.read_bytes()
        finally:
            dump.unlink(missing_ok=True)

    def driver(self, method: str, run: meth.MigrationRun,
               agents: lab_agents.LabAgents | None) -> meth.Driver:
        assert self.guest is not None
        caps = {"auto_converge": True} if self.cfg.auto_converge else {}
        self.guest.set_migration_caps(**caps)
        return meth.make_driver(method, self.lab, self.guest, run,
                                self.cfg.downtime_ms, agents)

    def verify(self, run: meth.MigrationRun) -> ramcheck.RamComparison:
        assert self.guest is not None and run.dst_guest is not None
        return ramcheck.compare_ram(self.guest, run.dst_guest)

    def resume(self, run: meth.MigrationRun) -> None:
        dst = run.dst_guest
        assert dst is not None
        lines = dst.alive_count()
        dst.cont()
        dst.wait_alive(lines, timeout=30)

    def close(self, run: meth.MigrationRun) -> None:
        for g in (run.dst_guest, self.guest):
            if g is not None:
                g.stop()


def environment() -> dict[str, Any]:
    try:
        out = subprocess.run(
            [os.environ.get("DCMIGRATE_QEMU", qemu.QEMU_BINARY),
             "--version"], capture_output=True, text=True, timeout=10)
        qemu_version = out.stdout.splitlines()[0] if out.stdout else None
    except (OSError, subprocess.SubprocessError):
        qemu_version = None
    return {"qemu": qemu_version, "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "loadavg_at_start": list(os.getloadavg()),
            "free_page_reporting": machine.free_page_reporting(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _rates_text(rates: dict[str, tuple[float, float]], dst: str) -> str:
    parts = []
    for host, (up, down) in rates.items():
        if host == "src" or up >= 1.0:
            parts.append("%s\u2191%.0f" % (host, up))
    if dst in rates:
        parts.append("%s\u2193%.0f" % (dst, rates[dst][1]))
    return " ".join(parts) + " Mbit/s" if parts else ""


class Runner:
    """Runs a :class:`BenchConfig` and returns the JSON document."""

    def __init__(self, cfg: BenchConfig, progress: ProgressView,
                 on_record: Callable[[dict[str, Any]], None] | None = None
                 ) -> None:
        self.cfg = cfg
        self.progress = progress
        self.on_record = on_record
        self.calibration: Calibration | None = None
        self.records: list[dict[str, Any]] = []
        self.series: dict[str, Series] = {}
        self.env = environment()
        self.lab: topology.Lab | None = None

    @property
    def needs_agents(self) -> bool:
        # Through libvirt, restart goes through the agents too.
        agent_methods = AGENT_METHODS | (
            {"restart"} if self.cfg.via == "libvirt" else set())
        return any(m in agent_methods for m in self.cfg.methods)

    def _side(self, lab: topology.Lab, image: lab_image.GuestImage,
              hosts: Any) -> Any:
        if self.cfg.via == "libvirt":
            from nova_dcmigrate.bench import libvirt_methods
            return libvirt_methods.LibvirtSide(self.cfg, lab, image, hosts)
        return QmpSide(self.cfg, lab, image)

    def document(self) -> dict[str, Any]:
        return report.document(
            self.cfg, self.records,
            dataclasses.asdict(self.calibration) if self.calibration
            else None, self.env)

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        image = lab_image.build_guest_image(
            Path(cfg.cache_dir) if cfg.cache_dir else None)
        broker = rabbit.broker_from_env() if self.needs_agents else None
        try:
            links = {h: (None if cfg.links[h] in ("none", "")
                         else cfg.links[h]) for h in cfg.hosts}
            with topology.Lab(links, keep_workdir=cfg.keep_workdir) as lab:
                self.lab = lab
                self.progress.message(
                    "lab %s: %s" % (lab.run_id, ", ".join(
                        "%s=%s" % (h, cfg.links[h]) for h in cfg.hosts)))
                hosts = None
                if cfg.via == "libvirt":
                    self.progress.message(
                        "starting a libvirtd on every lab host")
                    from nova_dcmigrate.lab import libvirt_host
                    hosts = libvirt_host.start_libvirt_hosts(lab, cfg.hosts)
                    self.env["libvirt"] = libvirt_host.libvirt_version()
                agents = None
                if self.needs_agents:
                    # The bound needs the new destination's count of
                    # needed pages also when it skipped its holders.
                    agents = lab_agents.LabAgents(
                        lab, extra_conf="count_needed_pages = true",
                        mount_ns=None if hosts is None else
                        lab_agents.libvirt_mount_ns(hosts)).start()
                try:
                    sampler = LinkSampler({h: lab.hosts[h].bridge_port
                                           for h in cfg.hosts})
                    for order, (rep, method) in enumerate(run_order(cfg)):
                        self._one(self._side(lab, image, hosts), agents,
                                  sampler, method, rep, order)
                finally:
                    if agents is not None:
                        agents.stop()
        finally:
            if broker is not None:
                broker.stop()
        report.fill_scenario_bound(self.records)
        return self.document()

    def _one(self, side: Any, agents: lab_agents.LabAgents | None,
             sampler: LinkSampler, method: str, rep: int,
             order: int) -> None:
        """One run: boot, (calibrate), settle, migrate, compare, resume.

        :param side: :class:`QmpSide` or the libvirt path's
            :class:`~nova_dcmigrate.bench.libvirt_methods.LibvirtSide`.
        """
        cfg = self.cfg
        key = "%s#%d" % (method, rep)
        self.progress.start_run(key, "%s #%d" % (method, rep))
        run = meth.MigrationRun(method=method)
        driver: meth.Driver | None = None
        series: Series | None = None
        ram = None
        alive: bool | None = None
        error: str | None = None
        try:
            self.progress.update(key, phase="booting",
                                 detail="%d MiB guest on src" %
                                 cfg.memory_mib)
            side.boot()
            if self.calibration is None:
                self.progress.update(key, phase="calibrating",
                                     detail="counting non-zero pages")
                self.calibration = calibrate(side.read_ram)
                self.progress.message(
                    "first pass of this guest: ~%.0f MB (%d non-zero "
                    "pages); redirects at %s of it" % (
                        self.calibration.first_pass_bytes / 1e6,
                        self.calibration.nonzero_pages,
                        ", ".join(str(f) for f in cfg.redirect_at)
                        or "none"))
            self.progress.update(key, phase="dirtying",
                                 detail="%d MiB at %d MiB/s" %
                                 (cfg.dirty_mib, cfg.dirty_rate))
            time.sleep(cfg.settle_s)
            probe = agent_memory.AgentMemoryProbe(agents) \
                if agents is not None else None
            if probe is not None:
                probe.start()
            driver = side.driver(method, run, agents)
            schedule = meth.RedirectSchedule(
                cfg.redirect_at, cfg.route,
                self.calibration.first_pass_bytes)

            def observe(host: str, poll: meth.Poll,
                        fraction: float) -> None:
                detail = "\u2192 %s  %s  remaining %.0f MB" % (
                    host, _rates_text(sampler.latest_rates(), host),
                    poll.remaining / 1e6)
                self.progress.update(key, phase="migrating",
                                     fraction=fraction, detail=detail)

            series = sampler.start()
            try:
                meth.drive(method, driver, schedule, cfg.timeout_s, observe)
            finally:
                sampler.stop()
                if probe is not None:
                    # Before cleanup: holders still hold their RAM.
                    run.agent_memory = probe.finish()
            self.progress.update(key, phase="verifying",
                                 detail="comparing RAM byte for byte")
            ram = side.verify(run)
            if not ram.identical:
                error = "RAM differs in %d pages (first at %#x)" % (
                    ram.differing_pages, ram.first_difference or 0)
            side.resume(run)
            alive = True
        except Exception as err:  # noqa: BLE001 - recorded, run goes on
            LOG.debug("%s failed", key, exc_info=True)
            error = "%s: %s" % (type(err).__name__, err)
            if run.result is None and driver is not None:
                try:
                    driver.collect()
                except Exception:  # noqa: BLE001 - diagnostics only
                    pass
        finally:
            if driver is not None:
                driver.cleanup()
            side.close(run)
        rec = report.build_record(
            cfg, run, rep, order, ram=ram, alive=alive, series=series,
            error=error, nonzero_pages=self.calibration.nonzero_pages
            if self.calibration else None)
        if series is not None:
            self.series[key] = series
        self.records.append(rec)
        if self.on_record is not None:
            self.on_record(rec)
        if rec["ok"]:
            post = rec["post_redirect_time_s"]
            text = "total %.1f s" % (rec["total_time_s"] or 0)
            if post is not None and cfg.redirecting:
                text += ", %.1f s after the redirect" % post
            text += ", RAM identical"
            self.progress.finish_run(key, True, text)
        else:
            self.progress.finish_run(key, False, error or "RAM differs")
