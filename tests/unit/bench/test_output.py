"""Progress display, the PNG, and the command's early exits."""

from __future__ import annotations

import io

from nova_dcmigrate.bench import options
from nova_dcmigrate.bench import plot
from nova_dcmigrate.bench import progress
from nova_dcmigrate.bench import report
from tests.unit.bench import fakes


def test_plain_progress_lines_are_rate_limited():
    out = io.StringIO()
    view = progress.PlainProgress(out, interval_s=60)
    with view:
        view.start_run("k", "dcmigrate #1")
        view.update("k", phase="migrating", fraction=0.5, detail="-> old")
        view.update("k", fraction=0.6)          # same phase: suppressed
        view.update("k", phase="verifying")
        view.finish_run("k", True, "RAM identical")
        view.message("hello")
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    assert "dcmigrate #1: migrating,  50% of a first pass, -> old" in \
        lines[1]
    assert "done, RAM identical" in lines[3]


def test_make_progress_picks_plain_for_pipes():
    assert isinstance(progress.make_progress(io.StringIO()),
                      progress.PlainProgress)


def test_rich_progress_renders(tmp_path):
    from rich.console import Console
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    view = progress.RichProgress(console)
    with view:
        view.start_run("k", "restart #1")
        view.update("k", phase="migrating", fraction=0.4, detail="-> new")
        view.finish_run("k", False, "boom")
        view.update("missing", phase="x")
    assert "restart #1" in console.file.getvalue()


def test_plot_writes_a_png(tmp_path):
    conf = options.config_from_args(options.build_parser().parse_args([]))
    recs = [report.build_record(conf, fakes.agent_run(), 1, 0,
                                ram=fakes.ram(), series=fakes.series()),
            report.build_record(conf, fakes.restart_run(), 1, 1,
                                ram=fakes.ram(),
                                series=fakes.series(t0=199.9))]
    report.fill_scenario_bound(recs)
    doc = report.document(conf, recs, None, {})
    path = tmp_path / "bench.png"
    plot.plot(doc, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_via_libvirt_without_libvirt_says_so(capsys, monkeypatch):
    from nova_dcmigrate.cmd import bench
    monkeypatch.setattr(bench, "_have_libvirt", lambda: False)
    assert bench.main(["--via", "libvirt"]) == 2
    assert "needs libvirt-python" in capsys.readouterr().err


def test_from_json_replays_table_and_plot(tmp_path, capsys):
    from nova_dcmigrate.cmd import bench
    conf = options.config_from_args(options.build_parser().parse_args([]))
    recs = [report.build_record(conf, fakes.agent_run(), 1, 0,
                                ram=fakes.ram(), series=fakes.series()),
            report.build_record(conf, fakes.restart_run(), 1, 1,
                                ram=fakes.ram())]
    report.fill_scenario_bound(recs)
    src = tmp_path / "run.json"
    report.write_json(src, report.document(conf, recs, None, {}))
    png = tmp_path / "again.png"
    assert bench.main(["--from-json", str(src), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "paused for 250 ms" in out and "0.62x" in out
    assert png.exists()
    (tmp_path / "junk.json").write_text("{}")
    assert bench.main(["--from-json", str(tmp_path / "junk.json")]) == 2
