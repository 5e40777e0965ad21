"""dcmigrate-lab: build the lab guest, clean up stale labs, smoke-test.

Subcommands:

``build-image``
    Build (or find in the cache) the guest kernel + initramfs; print paths.
``cleanup``
    Remove namespaces, links and workdirs of labs whose owner died.
``migrate-direct``
    Two hosts, one guest, one plain QEMU-to-QEMU migration over a shaped
    link; compares RAM, resumes the destination and prints one result line.
``demo``
    The main job (``make demo``): a guest migrated through the dcmigrate
    agents (RPC over RabbitMQ, authenticated agent links) and, as the
    reference, directly QEMU to QEMU over the same link; RAM compared byte
    for byte each time, results printed side by side.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType
from typing import Sequence

from oslo_config import cfg
from oslo_log import log as logging

# Imported before logging is set up: importing pyroute2 resets the level
# of its logger, which would undo default_log_levels below.
from nova_dcmigrate.lab import agents as lab_agents
from nova_dcmigrate.lab import direct
from nova_dcmigrate.lab import exception
from nova_dcmigrate.lab import image as lab_image
from nova_dcmigrate.lab import qemu
from nova_dcmigrate.lab import ramcheck
from nova_dcmigrate.lab import rabbit
from nova_dcmigrate.lab.cloud import cli as cloud_cli
from nova_dcmigrate.lab import topology
from nova_dcmigrate.lab import via_agents

LOG = logging.getLogger(__name__)


def _setup_logging(debug: bool) -> None:
    conf = cfg.ConfigOpts()
    logging.register_options(conf)
    # pyroute2 logs every netlink message at DEBUG; qemu.qmp logs each
    # connection's end-of-file at INFO.
    logging.set_defaults(default_log_levels=[
        *logging.get_default_log_levels(), "pyroute2=INFO",
        "qemu.qmp=WARNING"])
    conf([], project="nova-dcmigrate", default_config_files=[])
    conf.set_override("debug", debug)
    logging.setup(conf, "dcmigrate-lab")


def _sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into SystemExit so context managers tear the lab down.
    raise SystemExit(128 + signum)


def _build_image(args: argparse.Namespace) -> int:
    started = time.monotonic()
    img = lab_image.build_guest_image(args.cache_dir)
    print(f"kernel={img.kernel}")
    print(f"initrd={img.initrd}")
    print(f"key={img.key} kernel_package={img.kernel_package} "
          f"kernel_version={img.kernel_version} "
          f"seconds={time.monotonic() - started:.1f}")
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    removed = topology.cleanup_stale(prefix=args.prefix)
    print(f"removed {len(removed)} stale lab(s)"
          + (f": {' '.join(removed)}" if removed else ""))
    return 0


def _migrate_direct(args: argparse.Namespace) -> int:
    img = lab_image.build_guest_image(args.cache_dir)
    link = None if args.link == "none" else args.link
    params: dict[str, int] = {}
    if args.downtime_limit is not None:
        params["downtime_limit"] = args.downtime_limit
    caps = {"auto_converge": True} if args.auto_converge else {}
    with topology.Lab({"src": link, "dst": link}, run_id=args.run_id,
                      keep_workdir=args.keep_workdir) as lab:
        src = qemu.QemuGuest.start(
            lab, "src", img, memory_mib=args.memory,
            dirty_mib=args.dirty_mib, dirty_rate=args.dirty_rate)
        boot_s = src.wait_booted(args.boot_timeout)
        # Let the dirtier run a little before the migration starts.
        time.sleep(args.settle)
        dst, result = direct.migrate_direct(
            lab, src, "dst", capabilities=caps, parameters=params,
            timeout=args.timeout)
        cmp = ramcheck.compare_ram(src, dst)
        before = dst.alive_count()
        dst.cont()
        uptime = dst.wait_alive(before, timeout=30)
        print(f"RESULT link={link or 'unshaped'} memory_mib={args.memory} "
              f"dirty_mib={args.dirty_mib} dirty_rate={args.dirty_rate} "
              f"boot_s={boot_s:.1f} status={result.status} "
              f"total_ms={result.total_time_ms} "
              f"downtime_ms={result.downtime_ms} "
              f"setup_ms={result.setup_time_ms} "
              f"transferred={result.transferred_bytes} "
              f"syncs={result.dirty_sync_count} mbps={result.mbps:.1f} "
              f"throttle={result.cpu_throttle_percent} "
              f"ram_identical={cmp.identical} "
              f"differing_pages={cmp.differing_pages} "
              f"alive_after_cont=True guest_uptime={uptime:.1f}"
              + (f" workdir={lab.workdir}" if args.keep_workdir else ""))
        return 0 if cmp.identical else 1


def _demo_row(label: str, result: qemu.MigrationResult,
              cmp: ramcheck.RamComparison, extra: str = "") -> str:
    return (f"  {label:<16} {result.total_time_ms or 0:>8} ms "
            f"{result.downtime_ms or 0:>8} ms "
            f"{result.transferred_bytes / 1e6:>9.1f} MB "
            f"{result.mbps:>8.1f} "
            f"{'yes' if cmp.identical else 'NO':>6}  {extra}")


def _demo(args: argparse.Namespace) -> int:
    img = lab_image.build_guest_image(args.cache_dir)
    link = None if args.link == "none" else args.link
    broker = rabbit.broker_from_env()
    rows: list[str] = []
    ok = True
    try:
        with topology.Lab({"src": link, "dst": link}) as lab, \
                lab_agents.LabAgents(lab) as agents:
            print(f"lab {lab.run_id}: hosts src={lab.hosts['src'].address} "
                  f"dst={lab.hosts['dst'].address}, links {link}, "
                  f"agents up (RPC over RabbitMQ)")
            guest = qemu.QemuGuest.start(
                lab, "src", img, memory_mib=args.memory,
                dirty_mib=args.dirty_mib, dirty_rate=args.dirty_rate)
            guest.wait_booted(args.boot_timeout)
            print(f"guest {guest.name}: {args.memory} MiB, dirtying "
                  f"{args.dirty_mib} MiB at {args.dirty_rate} MiB/s")
            time.sleep(args.settle)
            print("migrating src -> dst through the dcmigrate agents ...")
            m = via_agents.migrate_via_agents(lab, agents, guest, "dst",
                                              timeout=args.timeout)
            assert m.result is not None
            cmp = ramcheck.compare_ram(guest, m.dst_guest)
            ok &= cmp.identical
            att = (m.dst_status or {}).get("attempts", [{}])[0]
            store = (m.dst_status or {}).get("store", {})
            carried = att.get("counters", {}).get("stream_bytes", 0)
            rows.append(_demo_row(
                "through agents", m.result, cmp,
                f"agent stream {carried / 1e6:.1f} MB, store "
                f"{store.get('bytes_held', 0) / 2**20:.0f} MiB held"))
            before = m.dst_guest.alive_count()
            m.dst_guest.cont()
            m.dst_guest.wait_alive(before, timeout=30)
            guest.stop()
            guest = m.dst_guest
            time.sleep(args.settle)
            print("migrating dst -> src directly, QEMU to QEMU "
                  "(reference) ...")
            dst, result = direct.migrate_direct(lab, guest, "src",
                                                timeout=args.timeout)
            cmp = ramcheck.compare_ram(guest, dst)
            ok &= cmp.identical
            rows.append(_demo_row("direct (ref.)", result, cmp))
            before = dst.alive_count()
            dst.cont()
            dst.wait_alive(before, timeout=30)
            guest.stop()
    finally:
        broker.stop()
    print()
    print(f"  {'method':<16} {'total':>11} {'downtime':>11} "
          f"{'sent':>12} {'Mbit/s':>8} {'RAM ok':>6}")
    for row in rows:
        print(row)
    print()
    print("RAM identical in every migration; the guest kept running after "
          "each resume." if ok else "ERROR: RAM differed")
    return 0 if ok else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcmigrate-lab",
        description="nova-dcmigrate network-namespace lab tools")
    parser.add_argument("--debug", action="store_true",
                        help="log at DEBUG level")
    parser.add_argument("--cache-dir", default=None,
                        help="guest image cache root (default: "
                             "$DCMIGRATE_CACHE_DIR or "
                             "/var/cache/nova-dcmigrate)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("build-image",
                   help="build or locate the guest kernel and initramfs"
                   ).set_defaults(func=_build_image)

    cleanup = sub.add_parser("cleanup",
                             help="remove labs left behind by dead runs")
    cleanup.add_argument("--prefix", default="dcm-",
                         help="name prefix of the labs to consider")
    cleanup.set_defaults(func=_cleanup)

    mig = sub.add_parser(
        "migrate-direct",
        help="boot a guest on a 2-host lab and migrate it QEMU to QEMU")
    mig.add_argument("--memory", type=int, default=256, help="guest MiB")
    mig.add_argument("--dirty-mib", type=int, default=64,
                     help="MiB the guest keeps dirtying (0: idle)")
    mig.add_argument("--dirty-rate", type=int, default=40,
                     help="dirtying rate in MiB/s (0: as fast as possible)")
    mig.add_argument("--link", default="300mbit",
                     help="rate of each host's link, e.g. 300mbit, 1gbit, "
                          "or 'none' for unshaped")
    mig.add_argument(
        "--downtime-limit", type=int, default=3000, metavar="MS",
        help="QEMU downtime-limit in ms (default 3000: 40 MiB/s of "
             "dirtying exceeds a 300 Mbit/s link, so precopy cannot "
             "converge within QEMU's default of 300 ms)")
    mig.add_argument("--auto-converge", action="store_true",
                     help="enable QEMU's auto-converge vCPU throttling")
    mig.add_argument("--timeout", type=float, default=300,
                     help="seconds before the migration is cancelled")
    mig.add_argument("--boot-timeout", type=float, default=120)
    mig.add_argument("--settle", type=float, default=2.0,
                     help="seconds to let the guest dirty before migrating")
    mig.add_argument("--run-id", default=None,
                     help="lab run id (1-6 of [a-z0-9]); random by default")
    mig.add_argument("--keep-workdir", action="store_true",
                     help="keep QEMU and serial logs after the run")
    mig.set_defaults(func=_migrate_direct)

    demo = sub.add_parser(
        "demo", help="migrate a guest through the agents and directly, "
                     "compare (the main job: make demo)")
    demo.add_argument("--memory", type=int, default=256, help="guest MiB")
    demo.add_argument("--dirty-mib", type=int, default=64)
    demo.add_argument("--dirty-rate", type=int, default=20)
    demo.add_argument("--link", default="300mbit")
    demo.add_argument("--timeout", type=float, default=300)
    demo.add_argument("--boot-timeout", type=float, default=120)
    demo.add_argument("--settle", type=float, default=2.0)
    demo.set_defaults(func=_demo)

    cloud_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.debug)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return int(args.func(args))
    except exception.LabError as err:
        LOG.debug("%s failed", args.command, exc_info=True)
        print(f"ERROR: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
