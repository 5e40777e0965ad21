"""dcmigrate-bench: redirect a live migration on the lab, and measure it.

``make demo`` runs this with its defaults: a 256 MiB guest (a libvirt
domain; bare QEMU with ``--via qmp``) is migrated from a slow source
towards host ``old``, redirected to ``new`` half way through its first
pass, once with DCmigrate and once by aborting and restarting as Nova does
today; RAM is compared byte for byte after every run.  The
benchmark is the same command with knobs (``--help``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
import shutil
import signal
import sys
from types import FrameType
from typing import Any, Sequence
import warnings

# oslo.messaging pulls in eventlet, which warns on import.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

from oslo_config import cfg  # noqa: E402
from oslo_log import log as logging  # noqa: E402

# Imported before logging is set up: importing pyroute2 resets the level
# of its logger, which would undo default_log_levels below.
from nova_dcmigrate.bench import methods  # noqa: E402
from nova_dcmigrate.bench import options  # noqa: E402
from nova_dcmigrate.bench import progress as progress_mod  # noqa: E402
from nova_dcmigrate.bench import report  # noqa: E402
from nova_dcmigrate.bench.runner import Runner  # noqa: E402
from nova_dcmigrate.lab import exception as lab_exc  # noqa: E402

LOG = logging.getLogger(__name__)

NO_LIBVIRT = ("dcmigrate-bench: --via libvirt needs libvirt-python and "
              "libvirtd (tools/install-system-deps.sh); or use --via qmp")


def _setup_logging(debug: bool) -> None:
    conf = cfg.ConfigOpts()
    logging.register_options(conf)
    # The progress display is the user's channel; logs only say what went
    # wrong unless --debug.  pyroute2 logs every netlink message at DEBUG,
    # qemu.qmp each connection's end-of-file at INFO.
    levels = [*logging.get_default_log_levels(), "pyroute2=INFO",
              "qemu.qmp=WARNING"]
    if not debug:
        levels += ["nova_dcmigrate=WARNING", "oslo_messaging=WARNING"]
    logging.set_defaults(default_log_levels=levels)
    conf([], project="nova-dcmigrate", default_config_files=[])
    conf.set_override("debug", debug)
    logging.setup(conf, "dcmigrate-bench")


def _have_libvirt() -> bool:
    """libvirt-python importable and libvirtd installed."""
    return importlib.util.find_spec("libvirt") is not None and \
        shutil.which("libvirtd") is not None


def _install_signals() -> None:
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        # pyroute2 forks helpers that inherit this handler; only the
        # process that built the lab may tear it down.
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def _finish(conf: options.BenchConfig, doc: dict[str, Any],
            console: Any) -> None:
    if conf.json_path:
        report.write_json(conf.json_path, doc)
    if conf.plot_path and doc["records"]:
        from nova_dcmigrate.bench import plot
        try:
            plot.plot(doc, conf.plot_path)
        except Exception as err:  # noqa: BLE001 - the JSON is written
            LOG.debug("plot failed", exc_info=True)
            print("ERROR: writing the plot failed: %s" % err,
                  file=sys.stderr)
    if console is not None:
        report.print_rich(doc, console)
    else:
        print(report.render_text(doc))
    for what, path in (("JSON", conf.json_path), ("plot", conf.plot_path)):
        if path and (what == "JSON" or doc["records"]):
            print("%s: %s" % (what, path))
    sys.stdout.flush()


def _replay(conf: options.BenchConfig) -> int:
    """Table (and plot) of a former run, without running anything."""
    try:
        doc = json.loads(Path(conf.from_json or "").read_text())
    except (OSError, ValueError) as err:
        print("ERROR: cannot read %s: %s" % (conf.from_json, err),
              file=sys.stderr)
        return 2
    if doc.get("schema") != report.SCHEMA:
        print("ERROR: %s is not a dcmigrate-bench document" %
              conf.from_json, file=sys.stderr)
        return 2
    replay = dataclasses.replace(conf, json_path=None)
    _finish(replay, doc, None)
    return 0 if doc.get("ok") else 1


def main(argv: Sequence[str] | None = None) -> int:
    conf = options.parse(argv)
    if conf.from_json:
        return _replay(conf)
    if conf.via == "libvirt" and not _have_libvirt():
        print(NO_LIBVIRT, file=sys.stderr)
        return 2
    _setup_logging(conf.debug)
    _install_signals()
    view = progress_mod.make_progress()
    console = getattr(view, "console", None)
    runner = Runner(conf, view)
    rc = 0
    doc: dict[str, Any] | None = None
    try:
        with view:
            doc = runner.run()
    except (lab_exc.LabError, methods.BenchError) as err:
        LOG.debug("benchmark failed", exc_info=True)
        print("ERROR: %s" % err, file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        print("interrupted; the lab was removed", file=sys.stderr)
        rc = 130
    if doc is None:
        if not runner.records:
            return rc or 1
        report.fill_scenario_bound(runner.records)
        doc = runner.document()
    _finish(conf, doc, console)
    if rc:
        return rc
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
