"""``dcmigrate-lab cloud up|down|run|tempest``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import Any

from nova_dcmigrate.lab.cloud import cloud as lab_cloud
from nova_dcmigrate.lab.cloud import tempest


def _ramcheck(cloud: lab_cloud.Cloud) -> bool:
    """Redirect through the cloud, RAM compared byte for byte."""
    from nova_dcmigrate.lab.cloud import ramcheck
    result = ramcheck.redirect_ram_check(cloud)
    print(f"cloud RAM check after a redirect: "
          f"{'IDENTICAL' if result.identical else 'DIFFERENT'} "
          f"({result.differing_pages} differing pages of "
          f"{result.size_bytes >> 12}), final host {result.final_host}, "
          f"{result.seconds} s; redirect "
          f"{json.dumps(result.redirect_status)}", flush=True)
    return result.identical and result.final_host.endswith("c")


def _peak_rss_mib() -> float:
    """Total RSS of every process now (MiB): the cloud's footprint."""
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/statm") as f:
                    total += int(f.read().split()[1])
            except OSError:
                pass
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cloud(args: argparse.Namespace) -> lab_cloud.Cloud:
    return lab_cloud.Cloud(Path(args.repo), rate=args.rate,
                           keep_workdir=args.keep_workdir,
                           api=not args.no_api,
                           neutron_stub=args.neutron_stub)


def _forked_child_exits(owner: int) -> None:
    """End a forked child here, before it tears down the parent's cloud.

    Libraries fork (pyroute2 enters network namespaces in children); an
    exception in such a child unwinds through our ``finally`` blocks,
    which must run in the process that brought the cloud up only.
    """
    if os.getpid() != owner:
        os._exit(1)


def _run(args: argparse.Namespace) -> int:
    """Bring the cloud up and keep it until SIGTERM/Ctrl-C."""
    owner = os.getpid()
    cloud = _cloud(args)
    try:
        info = cloud.up()
        print(json.dumps(info, indent=1), flush=True)

        def on_usr1(signum: int, frame: object) -> None:
            try:
                _ramcheck(cloud)
            except Exception as err:  # noqa: BLE001 - reported
                print(f"cloud RAM check failed: {err}", flush=True)

        # kill -USR1 <pid>: run the RAM check against the running cloud.
        signal.signal(signal.SIGUSR1, on_usr1)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        _forked_child_exits(owner)
        cloud.down()


def _up(args: argparse.Namespace) -> int:
    if lab_cloud.STATE_FILE.exists():
        print(f"a cloud is already up ({lab_cloud.STATE_FILE}); "
              "run 'dcmigrate-lab cloud down' first", file=sys.stderr)
        return 1
    log = Path(args.log)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nova_dcmigrate.cmd.lab", "cloud", "run",
             "--repo", args.repo, "--rate", args.rate] +
            (["--no-api"] if args.no_api else []) +
            (["--neutron-stub"] if args.neutron_stub else []),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    while proc.poll() is None:
        try:
            state = json.loads(lab_cloud.STATE_FILE.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("pid") == proc.pid and "openrc" in state:
            print(f"cloud up in {state['bringup_seconds']} s; "
                  f"source {state['openrc']}")
            return 0
        time.sleep(1)
    print(f"cloud failed to come up; see {log}", file=sys.stderr)
    return 1


def _down(args: argparse.Namespace) -> int:
    if not lab_cloud.stop_running():
        print("no cloud running (or it did not stop)", file=sys.stderr)
        return 1
    return 0


def _tempest(args: argparse.Namespace) -> int:
    started = time.monotonic()
    owner = os.getpid()
    cloud = _cloud(args)
    rc = 1
    peak = 0.0
    try:
        info = cloud.up()
        peak = _peak_rss_mib()
        assert cloud.plane is not None
        tdir = tempest.configure(cloud.plane, info, cloud.repo,
                                 api_enabled=cloud.api)
        try:
            if args.regex:
                rc = tempest.run(tdir, args.regex)
                if args.shared_storage_regex:
                    rc = tempest.run(
                        tdir, args.shared_storage_regex,
                        conf=tdir / "etc" /
                        tempest.SHARED_STORAGE_CONF) or rc
            else:
                rc = tempest.run_default(tdir)
        finally:
            tempest.forget(tdir)
        peak = max(peak, _peak_rss_mib())
        if not args.no_ramcheck and not _ramcheck(cloud):
            rc = rc or 1
        print(f"cloud: bring-up {info['bringup_seconds']} s, "
              f"steps {info['timings']}")
    finally:
        _forked_child_exits(owner)
        cloud.down()
        print(f"cloud tempest: rc {rc}, {time.monotonic() - started:.0f} s "
              f"total, machine RSS {peak:.0f} MiB at peak sample")
    return rc


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("cloud", help="a real OpenStack on the lab "
                                          "(doc/source/lab-cloud.rst)")
    parser.add_argument("action", choices=["up", "down", "run", "tempest"])
    parser.add_argument("--repo", default=os.getcwd(),
                        help="nova-dcmigrate source tree (its devstack/ "
                             "plugin configures our parts)")
    parser.add_argument("--rate", default=lab_cloud.DEFAULT_RATE,
                        help="each host's link rate")
    parser.add_argument("--regex", default=None,
                        help="tempest test regex (tempest action)")
    parser.add_argument("--shared-storage-regex", default=None,
                        help="with --regex: then run these tests with "
                             "block_migration_for_live_migration off")
    parser.add_argument("--log", default="/tmp/dcmigrate-cloud.log",
                        help="log of the background cloud (up action)")
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument("--no-api", action="store_true",
                        help="do not run dcmigrate-api (the redirect API "
                             "tests then skip)")
    parser.add_argument("--neutron-stub", action="store_true",
                        help="a read-only Neutron stand-in instead of "
                             "neutron-server")
    parser.add_argument("--no-ramcheck", action="store_true",
                        help="tempest action: skip the lab's RAM check "
                             "after a redirect through the cloud")
    parser.set_defaults(func=lambda a: {
        "up": _up, "down": _down, "run": _run, "tempest": _tempest,
    }[a.action](a))


def sigint_to_keyboard() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
