"""Tests of the scenario-table runner (nova_dcmigrate.bench.matrix).

The bench itself is replaced by a stand-in command (a fake, said here:
running real labs belongs to the functional tests and takes minutes);
what is tested is parsing, the JSON bookkeeping, failure isolation and
the table.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

from nova_dcmigrate.bench import matrix


def _record(method, post, ok=True, ram=True, relayed=0):
    return {"method": method, "ok": ok, "ram_identical": ram,
            "post_redirect_time_s": post, "downtime_ms": 300,
            "bytes_from_source_after_redirect": 200e6,
            "bytes_relayed_total": relayed, "lower_bound_s": 5.0,
            "time_over_bound": post / 5.0}


def _result(records):
    return {"ok": all(r["ok"] for r in records),
            "config": {"methods": ["dcmigrate", "restart"]},
            "records": records}


# A stand-in for dcmigrate-bench: writes the JSON given in the
# environment to --json, or fails when FAIL is set.
STANDIN = r"""
import json, os, sys
args = sys.argv[1:]
if os.environ.get("FAIL") and os.environ["FAIL"] in args:
    print("boom"); sys.exit(3)
out = args[args.index("--json") + 1]
with open(out, "w") as f:
    f.write(os.environ["RESULT"])
"""


class ParseTest(unittest.TestCase):
    def test_scenario_file_of_issue_13(self):
        here = os.path.dirname(__file__)
        path = os.path.join(here, "..", "..", "..", "tools",
                            "issue13-scenarios.txt")
        with open(path) as f:
            scs = matrix.parse_scenarios(f.read(), path)
        names = [s.name for s in scs]
        self.assertIn("a'", names)
        self.assertIn("fast-source-slow-holder", names)
        self.assertEqual(8, len(scs))
        self.assertEqual("--memory", scs[0].args[0])

    def test_bad_lines(self):
        for text, why in (("a --memory 5", "name<TAB>"),
                          ("a\t--memory 5\na\t--memory 6", "duplicate"),
                          ("a\t--repeat 5", "set by the runner"),
                          ("a\t--json=x", "set by the runner"),
                          ("a\t'unclosed", "quotation")):
            with self.assertRaises(matrix.ScenarioFileError) as cm:
                matrix.parse_scenarios(text, "f")
            self.assertIn(why, str(cm.exception))

    def test_comments_and_blank_lines(self):
        scs = matrix.parse_scenarios("# x\n\n b\t--memory 5\n")
        self.assertEqual([matrix.Scenario("b", ("--memory", "5"))], scs)

    def test_safe_name(self):
        self.assertEqual("a_", matrix.safe_name("a'"))


class RowsTest(unittest.TestCase):
    def test_medians_ratio_and_ram_count(self):
        res = _result([_record("dcmigrate", 6.0, relayed=100e6),
                       _record("restart", 12.0),
                       _record("dcmigrate", 5.0, relayed=100e6),
                       _record("restart", 10.0),
                       _record("dcmigrate", 7.0, ram=False,
                               relayed=100e6),
                       _record("restart", 11.0)])
        rows = {r["method"]: r for r in matrix.rows_for(res)}
        self.assertEqual(6.0, rows["dcmigrate"]["post_redirect_time_s"])
        self.assertEqual(11.0, rows["restart"]["post_redirect_time_s"])
        self.assertAlmostEqual(6.0 / 11.0, rows["dcmigrate"]["vs_restart"])
        self.assertEqual(2, rows["dcmigrate"]["ram_identical"])
        self.assertEqual(3, rows["dcmigrate"]["runs"])
        cells = matrix.csv_cells("a'", rows["dcmigrate"], True)
        self.assertEqual(['"a\'"', "dcmigrate", "6.0", "300", "200", "100",
                          "5.0", "1.20", "0.55x", "2/3", "3/3"], cells)
        cells = matrix.csv_cells("a'", rows["restart"], False)
        self.assertEqual("", cells[0])
        self.assertEqual("-", cells[5])         # nothing relayed

    def test_runs_that_skipped_a_redirect_are_counted(self):
        skipped = _record("restart", 2.5)
        skipped["skipped_redirects"] = [0.7]
        res = _result([_record("dcmigrate", 5.5), skipped,
                       _record("dcmigrate", 5.6), _record("restart", 4.8)])
        rows = {r["method"]: r for r in matrix.rows_for(res)}
        self.assertEqual("2/2", matrix.csv_cells("u2", rows["dcmigrate"],
                                                 True)[-1])
        self.assertEqual("1/2", matrix.csv_cells("u2", rows["restart"],
                                                 False)[-1])

    def test_overall_median_over_bound_and_worst_vs_restart(self):
        def outcome(name, dc, rs):
            o = matrix.Outcome(matrix.Scenario(name, ()), 0, 1.0, "", "")
            o.result = _result([_record("dcmigrate", dc),
                                _record("restart", rs)])
            return o
        outs = [outcome("a", 6.0, 12.0), outcome("b", 7.0, 7.0),
                outcome("c", 10.0, 8.0)]
        missing = matrix.Outcome(matrix.Scenario("d", ()), -1, 0.0, "", "",
                                 error="not run")
        summary = matrix.overall(outs + [missing])
        self.assertEqual(3, summary["scenarios"])
        self.assertAlmostEqual(7.0 / 5.0, summary["median_x_bound"])
        self.assertEqual((10.0 / 8.0, "c"), summary["worst_vs_restart"])
        self.assertIn("worst ratio to restart 1.25x (c)",
                      matrix.overall_text(summary))

    def test_failed_runs_are_not_in_the_medians(self):
        res = _result([_record("dcmigrate", 6.0),
                       _record("dcmigrate", 60.0, ok=False),
                       _record("restart", 12.0)])
        rows = {r["method"]: r for r in matrix.rows_for(res)}
        self.assertEqual(6.0, rows["dcmigrate"]["post_redirect_time_s"])
        self.assertEqual(1, rows["dcmigrate"]["ok_runs"])


class RunTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ["rm", "-rf", self.dir])
        self.standin = os.path.join(self.dir, "bench.py")
        with open(self.standin, "w") as f:
            f.write(STANDIN)
        self.scen = os.path.join(self.dir, "s.txt")
        with open(self.scen, "w") as f:
            f.write("one\t--memory 64\ntwo\t--memory 128\n")
        good = _result([_record("dcmigrate", 6.0),
                        _record("restart", 12.0)])
        os.environ["RESULT"] = json.dumps(good)
        self.addCleanup(os.environ.pop, "RESULT", None)
        self.addCleanup(os.environ.pop, "FAIL", None)
        self.out = os.path.join(self.dir, "out")

    def _main(self, *extra):
        return matrix.main([self.scen, "--out", self.out, "--bench",
                            "%s %s" % (sys.executable, self.standin),
                            *extra])

    def test_one_failure_is_recorded_and_the_rest_runs(self):
        os.environ["FAIL"] = "64"
        self.assertEqual(1, self._main())
        with open(os.path.join(self.out, "summary.json")) as f:
            summary = json.load(f)["scenarios"]
        self.assertEqual(3, summary[0]["returncode"])
        self.assertIn("no JSON", summary[0]["error"])
        self.assertIsNone(summary[1]["error"])
        self.assertEqual(0.5, summary[1]["rows"][0]["vs_restart"])
        with open(os.path.join(self.out, "table.rst")) as f:
            table = f.read()
        self.assertIn('"one", FAILED: exit status 3', table)
        self.assertIn('"two", dcmigrate, 6.0', table)
        with open(os.path.join(self.out, "one.log")) as f:
            self.assertIn("boom", f.read())

    def test_only_reruns_one_and_keeps_the_others(self):
        self.assertEqual(0, self._main())
        os.environ["RESULT"] = json.dumps(_result(
            [_record("dcmigrate", 3.0), _record("restart", 12.0)]))
        self.assertEqual(0, self._main("--only", "two"))
        with open(os.path.join(self.out, "table.rst")) as f:
            table = f.read()
        self.assertIn('"one", dcmigrate, 6.0', table)
        self.assertIn('"two", dcmigrate, 3.0', table)

    def test_stale_json_is_not_reported(self):
        self.assertEqual(0, self._main())
        os.environ["FAIL"] = "128"
        self.assertEqual(1, self._main("--only", "two"))
        with open(os.path.join(self.out, "table.rst")) as f:
            self.assertIn('"two", FAILED', f.read())

    def test_unknown_only_is_refused(self):
        self.assertEqual(2, self._main("--only", "nope"))

    def test_arguments_passed_to_the_bench(self):
        sc = matrix.Scenario("a'", ("--memory", "5"))
        cmd = matrix.bench_command(["b"], sc, "/o", "dcmigrate,restart",
                                   3, 1)
        self.assertEqual(["b", "--memory", "5", "--methods",
                          "dcmigrate,restart", "--repeat", "3", "--seed",
                          "1", "--json", "/o/a_.json", "--plot",
                          "/o/a_.png"], cmd)
