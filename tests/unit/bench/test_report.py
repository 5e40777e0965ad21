"""Records, bounds per record, summary, JSON schema and text output."""

from __future__ import annotations

import json

import pytest

from nova_dcmigrate.bench import counters as ctr
from nova_dcmigrate.bench import options
from nova_dcmigrate.bench import report
from tests.unit.bench import fakes


def cfg(*argv):
    return options.config_from_args(options.build_parser().parse_args(
        ["--link", "src=100mbit", "old=1gbit", "new=1gbit", *argv]))


def test_counters_from_agent_status():
    c = ctr.attempt_counters(fakes.agent_status(), "src", 1, "new", ["old"])
    assert c.source_bytes == 40_000_000
    assert c.forwarded_held_bytes == 1000 * ctr.PAGE_RECORD_BYTES
    assert c.source_only_bytes == 40_000_000 - 1000 * 4104
    # old relayed 20 MB for 5000 pages, 4000 of them were used.
    assert c.relays["old"].used_bytes == 16_000_000
    assert c.held_bytes == 16_000_000 + 1000 * 4104
    assert c.pages_dropped == 6000
    t = ctr.totals([c])
    assert t.bytes_from_source == 40_000_000
    assert t.bytes_relayed == {"old": 20_000_000}
    assert t.relay_detail["old"]["injected"] == 4000
    assert t.pages_deduplicated == 6000


def test_counters_without_redirect_plan_use_stream_bytes():
    c = ctr.attempt_counters(fakes.agent_status(), "src", 0, "old", [])
    assert c.source_bytes == 30_000_000
    assert c.relays == {}
    missing = ctr.attempt_counters({}, "src", 3, "new", [])
    assert missing.source_bytes == 0 and missing.held_bytes == 0


def test_agent_record_has_own_bytes_and_a_scenario_sample():
    conf = cfg()
    rec = report.build_record(conf, fakes.agent_run(), 1, 0,
                              ram=fakes.ram(), alive=True,
                              series=fakes.series())
    assert report.check_record(rec) == []
    assert rec["total_time_s"] == 14.0
    assert rec["post_redirect_time_s"] == 10.0
    assert rec["downtime_ms"] == 250
    assert rec["bytes_from_source_after_redirect"] == 40_000_000
    assert rec["bytes_relayed"] == {"old": 20_000_000}
    assert rec["pages_deduplicated"] == 6000
    # Its own source-only bytes over the 100 Mbit/s source link: the
    # base of its link utilisation.
    s_only = 40_000_000 - 1000 * 4104
    assert rec["source_only_bytes"] == s_only
    assert rec["own_bytes_bound_s"] == pytest.approx(s_only / 12.5e6,
                                                     abs=1e-3)
    assert rec["link_utilisation"] == pytest.approx(
        rec["own_bytes_bound_s"] / 10.0, abs=1e-3)
    # The scenario sample counts pages by final content: 8000 only the
    # source had, over its 100 Mbit/s link.
    assert rec["needed_pages"]["source_only"] == 8000
    assert rec["bound_sample_s"] == pytest.approx(8000 * 4104 / 12.5e6,
                                                  abs=1e-3)
    assert rec["bound_sample_term"] == "source upload"
    # Filled for the whole run by fill_scenario_bound().
    assert rec["lower_bound_s"] is None
    report.fill_scenario_bound([rec])
    assert rec["lower_bound_s"] == rec["bound_sample_s"]
    assert rec["time_over_bound"] == pytest.approx(
        10.0 / rec["lower_bound_s"], abs=1e-3)
    assert rec["ram_identical"] is True and rec["ok"] is True
    assert rec["redirects"][0]["t_s"] == 4.0
    assert rec["switchover_started_s"] == pytest.approx(13.75)
    assert set(rec["link_bytes_after_redirect"]) == {"src", "old", "new"}
    json.dumps(rec)


def test_every_method_gets_the_same_scenario_bound():
    conf = cfg()
    recs = [report.build_record(conf, fakes.agent_run(), 1, 0,
                                ram=fakes.ram()),
            report.build_record(conf, fakes.restart_run(16.0), 1, 1,
                                ram=fakes.ram())]
    assert recs[1]["bound_sample_s"] is None
    assert recs[1]["bytes_from_source_after_redirect"] == 150_000_000
    assert recs[1]["bytes_relayed"] == {}
    report.fill_scenario_bound(recs)
    assert recs[1]["lower_bound_s"] == recs[0]["lower_bound_s"] == \
        recs[0]["bound_sample_s"]
    assert recs[1]["lower_bound_from"] == "median of 1 samples"
    assert recs[1]["time_over_bound"] == pytest.approx(
        16.0 / recs[0]["lower_bound_s"], abs=1e-3)


def test_a_wasteful_run_does_not_raise_the_bound():
    conf = cfg()
    lean = report.build_record(conf, fakes.agent_run(), 1, 0,
                               ram=fakes.ram())
    wasteful = report.build_record(conf, fakes.agent_run(sent=90_000_000),
                                   2, 1, ram=fakes.ram())
    assert wasteful["own_bytes_bound_s"] > lean["own_bytes_bound_s"]
    assert wasteful["bound_sample_s"] == lean["bound_sample_s"]


def test_scenario_bound_is_the_median_of_the_samples():
    conf = cfg()
    recs = [report.build_record(
        conf, fakes.agent_run(needed={"nonzero": 9000, "source_only": n,
                                      "held": 9000 - n, "local": 0}),
        i, i, ram=fakes.ram()) for i, n in enumerate((1000, 3000, 2000))]
    report.fill_scenario_bound(recs)
    assert len({r["lower_bound_s"] for r in recs}) == 1
    assert recs[0]["lower_bound_s"] == pytest.approx(2000 * 4104 / 12.5e6,
                                                     abs=1e-3)


def test_no_agent_method_no_scenario_bound():
    recs = [report.build_record(cfg(), fakes.restart_run(), 1, 0,
                                ram=fakes.ram())]
    report.fill_scenario_bound(recs)
    assert recs[0]["lower_bound_s"] is None
    assert recs[0]["time_over_bound"] is None


def test_several_redirects_add_the_time_between_them():
    conf = cfg("--redirect-at", "0.3,0.6")
    run = fakes.agent_run()
    run.redirects.append(run.redirects[0].__class__(
        at=107.0, fraction=0.6, from_host="new", to_host="new2",
        transferred=1))
    rec = report.build_record(conf, run, 1, 0, ram=fakes.ram())
    single = report.build_record(cfg(), fakes.agent_run(), 1, 0,
                                 ram=fakes.ram())
    assert rec["time_between_redirects_s"] == 3.0
    assert rec["bound_sample_s"] == pytest.approx(
        single["bound_sample_s"] + 3.0, abs=1e-3)


def test_no_redirect_scenario_bounds_every_method():
    conf = cfg("--redirect-at", "none")
    run = fakes.restart_run()
    run.method = "direct"
    run.redirects.clear()
    rec = report.build_record(conf, run, 1, 0, ram=fakes.ram(),
                              nonzero_pages=30_000)
    assert rec["post_redirect_time_s"] == rec["total_time_s"]
    # Every non-zero page of the guest from the source (not QEMU's bytes,
    # which a dirtying guest inflates).
    report.fill_scenario_bound([rec])
    assert rec["lower_bound_s"] == pytest.approx(30_000 * 4104 / 12.5e6,
                                                 abs=1e-3)
    assert rec["own_bytes_bound_s"] == pytest.approx(150_000_000 / 12.5e6,
                                                     abs=1e-3)


def test_direct_in_a_redirect_scenario_has_no_post_redirect_time():
    run = fakes.restart_run()
    run.method = "direct"
    run.redirects.clear()
    rec = report.build_record(cfg(), run, 1, 0, ram=fakes.ram())
    assert rec["post_redirect_time_s"] is None
    report.fill_scenario_bound([rec])
    assert rec["lower_bound_s"] is None and rec["time_over_bound"] is None


def test_ram_difference_and_errors_make_a_record_fail():
    bad = report.build_record(cfg(), fakes.agent_run(), 1, 0,
                              ram=fakes.ram(False))
    assert bad["ram_identical"] is False and bad["ok"] is False
    err = report.build_record(cfg(), fakes.agent_run(), 1, 0, ram=None,
                              error="MigrationFailed: boom")
    assert err["ok"] is False and err["ram_identical"] is False


def test_summary_medians_and_ratio_to_restart():
    conf = cfg("--repeat", "3")
    recs = [report.build_record(conf, fakes.agent_run(), i, 0,
                                ram=fakes.ram()) for i in (1, 2, 3)]
    recs += [report.build_record(conf, fakes.restart_run(p), i, 1,
                                 ram=fakes.ram())
             for i, p in ((1, 16.0), (2, 20.0), (3, 18.0))]
    report.fill_scenario_bound(recs)
    summ = report.summarize(recs, ["dcmigrate", "restart"])
    dc, rs = summ["methods"]["dcmigrate"], summ["methods"]["restart"]
    assert rs["median"]["post_redirect_time_s"] == 18.0
    assert dc["median"]["post_redirect_time_s"] == 10.0
    assert dc["ratio_to_restart"]["post_redirect_time_s"] == \
        pytest.approx(10 / 18, abs=1e-3)
    assert rs["ratio_to_restart"]["post_redirect_time_s"] == 1.0
    assert dc["ram_identical_all"] and dc["ok_runs"] == 3
    assert summ["bound_to_restart_ratio"] == pytest.approx(
        dc["median"]["lower_bound_s"] / 18.0, abs=1e-3)


def test_summary_without_restart_has_no_ratio():
    recs = [report.build_record(cfg(), fakes.agent_run(), 1, 0,
                                ram=fakes.ram())]
    summ = report.summarize(recs, ["dcmigrate"])
    assert summ["methods"]["dcmigrate"]["ratio_to_restart"] is None


def test_document_schema_and_json_file(tmp_path):
    conf = cfg()
    recs = [report.build_record(conf, fakes.agent_run(), 1, 0,
                                ram=fakes.ram(), series=fakes.series()),
            report.build_record(conf, fakes.restart_run(), 1, 1,
                                ram=fakes.ram())]
    report.fill_scenario_bound(recs)
    doc = report.document(conf, recs, {"first_pass_bytes": 1}, {"cpus": 2})
    path = tmp_path / "out" / "bench.json"
    report.write_json(path, doc)
    back = json.loads(path.read_text())
    assert back["schema"] == report.SCHEMA
    assert back["ok"] is True
    assert back["links_bit_per_s"]["src"] == {"up": 100_000_000,
                                              "down": 100_000_000}
    for rec in back["records"]:
        assert report.check_record(rec) == [], rec["method"]
        for field in report.RECORD_FIELDS:
            assert field in rec
    assert set(back["summary"]["methods"]) == {"dcmigrate", "restart"}


def test_check_record_finds_problems():
    assert "missing link_utilisation" in report.check_record(
        {"method": "direct"})
    assert any("unknown method" in p for p in
               report.check_record({"method": "x"}))


def test_text_table_and_explanation():
    conf = cfg()
    recs = [report.build_record(conf, fakes.agent_run(), 1, 0,
                                ram=fakes.ram()),
            report.build_record(conf, fakes.restart_run(), 1, 1,
                                ram=fakes.ram())]
    report.fill_scenario_bound(recs)
    text = report.render_text(report.document(conf, recs, None, {}))
    assert "dcmigrate" in text and "restart" in text
    assert "0.62x" in text            # 10 s vs 16 s after the redirect
    assert "RAM identical in every run." in text
    bad = report.build_record(conf, fakes.agent_run(), 1, 0,
                              ram=fakes.ram(False))
    text = report.render_text(report.document(conf, [bad], None, {}))
    assert "ERROR" in text


def test_final_download_idle_counts_the_last_attempt_to_the_switchover():
    from nova_dcmigrate.bench import linkstats

    conf = cfg()                                # new: 1 Gbit/s down
    run = fakes.agent_run()                     # last attempt 104.1-114.0
    series = linkstats.Series(t0=100.0)
    full = 125_000_000 // 10                    # 0.1 s at 1 Gbit/s
    total = 0
    for i in range(141):                        # 100.0 .. 114.0
        t = 100.0 + i * 0.1
        # Idle before 106 s, full after.
        if i and t > 106.0 + 1e-9:
            total += full
        series.add(t, {"new": (0, total)})
    rec = report.build_record(conf, run, 1, 0, ram=fakes.ram(),
                              series=series)
    # Switchover 250 ms before completion: 113.75 s.
    assert rec["switchover_started_s"] == pytest.approx(13.75)
    assert rec["final_download_idle_s"] == pytest.approx(1.9, abs=0.01)
    rec = report.build_record(cfg("--link", "new=none"), run, 1, 0,
                              ram=fakes.ram(), series=series)
    assert rec["final_download_idle_s"] is None     # not shaped
