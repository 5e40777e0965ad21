"""Run a list of ``dcmigrate-bench`` scenarios and tabulate them.

Why: issue 13's "Done when" table is one bench run per scenario (methods
interleaved, 3 repeats, medians) over a fixed list of scenarios
(``tools/issue13-scenarios.txt``).  Running them by hand for ~30 minutes
is error prone; this runs each line in its own ``dcmigrate-bench``
process, keeps every JSON, goes on when a scenario fails (recorded as
such), and prints the rows for ``doc/source/method.rst``.

The scenario file: one scenario per line, ``name<TAB>arguments``; blank
lines and lines starting with ``#`` are ignored.  The arguments are the
scenario's (guest, links, redirects); the runner adds ``--methods``,
``--repeat``, ``--seed``, ``--json`` and ``--plot``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from nova_dcmigrate.exception import DcmigrateError

DEFAULT_METHODS = "dcmigrate,restart"
DEFAULT_REPEAT = 3
DEFAULT_SEED = 1
#: Arguments the runner owns: a scenario line must not set them.
RESERVED = ("--methods", "--repeat", "--seed", "--json", "--plot",
            "--from-json")
MB = 1e6

HEADER = ("scenario", "method", "after redirect s", "downtime ms",
          "from src MB", "relayed MB", "bound s", "x bound", "vs restart",
          "RAM identical", "all redirects")


class ScenarioFileError(DcmigrateError):
    msg_fmt = "%(path)s line %(line)d: %(reason)s"


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    args: tuple[str, ...]


@dataclasses.dataclass
class Outcome:
    """One scenario's bench run (``json`` None: it produced no JSON)."""

    scenario: Scenario
    returncode: int
    seconds: float
    json_path: str
    log_path: str
    result: dict[str, Any] | None = None
    error: str | None = None


def parse_scenarios(text: str, path: str = "<scenarios>") -> list[Scenario]:
    """:raises ScenarioFileError: a malformed line, a duplicate name, or
        an argument the runner sets itself."""
    out: list[Scenario] = []
    seen: set[str] = set()
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, rest = line.partition("\t")
        name = name.strip()
        if not sep or not name or not rest.strip():
            raise ScenarioFileError(path=path, line=no,
                                    reason="expected name<TAB>arguments")
        if name in seen:
            raise ScenarioFileError(path=path, line=no,
                                    reason="duplicate scenario %s" % name)
        try:
            args = tuple(shlex.split(rest))
        except ValueError as err:
            raise ScenarioFileError(path=path, line=no,
                                    reason=str(err)) from None
        bad = [a for a in args if a.split("=")[0] in RESERVED]
        if bad:
            raise ScenarioFileError(
                path=path, line=no,
                reason="%s is set by the runner" % ", ".join(bad))
        seen.add(name)
        out.append(Scenario(name, args))
    return out


def safe_name(name: str) -> str:
    """A file name for a scenario name (``a'`` -> ``a_``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def bench_command(bench: Sequence[str], sc: Scenario, out_dir: str,
                  methods: str, repeat: int, seed: int) -> list[str]:
    base = os.path.join(out_dir, safe_name(sc.name))
    return [*bench, *sc.args, "--methods", methods,
            "--repeat", str(repeat), "--seed", str(seed),
            "--json", base + ".json", "--plot", base + ".png"]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def rows_for(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per method: medians over the run's successful records."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for rec in result.get("records", []):
        by_method.setdefault(rec["method"], []).append(rec)
    rows = []
    for method in result.get("config", {}).get("methods", by_method):
        recs = by_method.get(method, [])
        ok = [r for r in recs if r.get("ok")]

        def med(key: str, recs: list[dict[str, Any]] = ok) -> float | None:
            return _median([float(r[key]) for r in recs
                            if r.get(key) is not None])

        rows.append({
            "method": method, "runs": len(recs), "ok_runs": len(ok),
            "post_redirect_time_s": med("post_redirect_time_s"),
            "downtime_ms": med("downtime_ms"),
            "bytes_from_source_after_redirect":
                med("bytes_from_source_after_redirect"),
            "bytes_relayed_total": med("bytes_relayed_total"),
            "lower_bound_s": med("lower_bound_s"),
            "time_over_bound": med("time_over_bound"),
            "ram_identical": sum(1 for r in recs if r.get("ram_identical")),
            # A run whose migration completed before a later redirect was
            # due did not follow the whole schedule (its time is then not
            # comparable with a run that did): counted, never hidden.
            "all_redirects": sum(1 for r in ok
                                 if not r.get("skipped_redirects")),
        })
    restart = next((r for r in rows if r["method"] == "restart"), None)
    for r in rows:
        base = restart["post_redirect_time_s"] if restart else None
        t = r["post_redirect_time_s"]
        r["vs_restart"] = (t / base if t is not None and base else None)
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def csv_cells(scenario: str, row: dict[str, Any], first: bool) -> list[str]:
    """One ``csv-table`` row as in ``doc/source/method.rst``."""
    relayed = row["bytes_relayed_total"]
    return [
        '"%s"' % scenario if first else "",
        row["method"],
        _fmt(row["post_redirect_time_s"], ".1f"),
        _fmt(row["downtime_ms"], ".0f"),
        _fmt(None if row["bytes_from_source_after_redirect"] is None
             else row["bytes_from_source_after_redirect"] / MB, ".0f"),
        "-" if not relayed else _fmt(relayed / MB, ".0f"),
        _fmt(row["lower_bound_s"], ".1f"),
        _fmt(row["time_over_bound"], ".2f"),
        "-" if row["vs_restart"] is None
        else _fmt(row["vs_restart"], ".2f") + "x",
        "%d/%d" % (row["ram_identical"], row["runs"]),
        "%d/%d" % (row["all_redirects"], row["ok_runs"]),
    ]


def table(outcomes: list[Outcome]) -> str:
    """The ``csv-table`` directive with one block of rows per scenario;
    a failed scenario is a row saying so (never silently left out)."""
    lines = [".. csv-table::",
             "   :header: " + ", ".join(HEADER),
             "   :align: left", ""]
    for o in outcomes:
        if o.result is None:
            lines.append('   "%s", FAILED: %s' % (
                o.scenario.name, (o.error or "no result").replace('"', "'")))
            continue
        for i, row in enumerate(rows_for(o.result)):
            lines.append("   " + ", ".join(
                csv_cells(o.scenario.name, row, i == 0)))
    return "\n".join(lines) + "\n"


def overall(outcomes: list[Outcome], method: str = "dcmigrate"
            ) -> dict[str, Any]:
    """Across scenarios, for ``method``: the median of its per-scenario
    "x bound" medians and its worst ratio to restart (issue 13 asks for
    <= 1.3x and <= 1.0x)."""
    over, vs = [], []
    for o in outcomes:
        for row in rows_for(o.result) if o.result else []:
            if row["method"] != method:
                continue
            if row["time_over_bound"] is not None:
                over.append((row["time_over_bound"], o.scenario.name))
            if row["vs_restart"] is not None:
                vs.append((row["vs_restart"], o.scenario.name))
    return {
        "method": method,
        "scenarios": len(over),
        "median_x_bound": _median([v for v, _ in over]),
        "worst_vs_restart": max(vs) if vs else None,
    }


def overall_text(summary: dict[str, Any]) -> str:
    worst = summary["worst_vs_restart"]
    return ("%s over %d scenarios: median time over the bound %s; worst "
            "ratio to restart %s.\n" % (
                summary["method"], summary["scenarios"],
                _fmt(summary["median_x_bound"], ".2f") + "x"
                if summary["median_x_bound"] is not None else "-",
                "-" if worst is None else "%.2fx (%s)" % worst))


def run_one(sc: Scenario, bench: Sequence[str], out_dir: str, methods: str,
            repeat: int, seed: int,
            runner: Callable[..., Any] = subprocess.run) -> Outcome:
    """Run one scenario; any failure is returned, never raised."""
    base = os.path.join(out_dir, safe_name(sc.name))
    cmd = bench_command(bench, sc, out_dir, methods, repeat, seed)
    started = time.monotonic()
    out = Outcome(sc, -1, 0.0, base + ".json", base + ".log")
    if os.path.exists(out.json_path):
        os.unlink(out.json_path)          # never report a stale result
    try:
        with open(out.log_path, "w") as log:
            log.write("$ %s\n" % " ".join(shlex.quote(c) for c in cmd))
            log.flush()
            proc = runner(cmd, stdout=log, stderr=subprocess.STDOUT,
                          check=False)
        out.returncode = proc.returncode
    except OSError as err:
        out.error = "cannot run %s: %s" % (cmd[0], err)
    out.seconds = time.monotonic() - started
    if os.path.exists(out.json_path):
        try:
            with open(out.json_path) as f:
                out.result = json.load(f)
        except (OSError, ValueError) as err:
            out.error = "unreadable JSON: %s" % err
    if out.result is None and out.error is None:
        out.error = "exit status %d, no JSON (see %s)" % (out.returncode,
                                                          out.log_path)
    elif out.result is not None and not out.result.get("ok", False):
        out.error = "some runs failed (exit status %d, see %s)" % (
            out.returncode, out.log_path)
    return out


def _default_bench() -> list[str]:
    here = os.path.join(os.path.dirname(sys.executable), "dcmigrate-bench")
    return [here] if os.path.exists(here) else ["dcmigrate-bench"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Run every scenario of a scenario file through "
                    "dcmigrate-bench and print the method.rst table.")
    p.add_argument("scenarios", help="scenario file (name<TAB>arguments)")
    p.add_argument("--out", default="bench-matrix", metavar="DIR",
                   help="where each scenario's JSON, plot and log go, "
                        "and summary.json / table.rst (default: %(default)s)")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only this scenario (repeatable); the table "
                        "still lists the others from their kept JSON")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--bench", default=None, metavar="CMD",
                   help="the dcmigrate-bench command (default: the one "
                        "next to this Python, else from PATH)")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing; tabulate the JSON files in --out")
    return p


def _kept(sc: Scenario, out_dir: str) -> Outcome:
    base = os.path.join(out_dir, safe_name(sc.name))
    o = Outcome(sc, 0, 0.0, base + ".json", base + ".log")
    try:
        with open(o.json_path) as f:
            o.result = json.load(f)
    except (OSError, ValueError):
        o.error = "not run (no %s)" % os.path.basename(o.json_path)
        o.returncode = -1
    return o


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with open(args.scenarios) as f:
            scenarios = parse_scenarios(f.read(), args.scenarios)
    except (OSError, ScenarioFileError) as err:
        print("error: %s" % err, file=sys.stderr)
        return 2
    unknown = set(args.only) - {s.name for s in scenarios}
    if unknown:
        print("error: unknown scenario(s) %s; known: %s" % (
            ", ".join(sorted(unknown)),
            ", ".join(s.name for s in scenarios)), file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    bench = shlex.split(args.bench) if args.bench else _default_bench()
    outcomes = []
    ran: list[Outcome] = []
    for sc in scenarios:
        if args.table_only or (args.only and sc.name not in args.only):
            outcomes.append(_kept(sc, args.out))
            continue
        print("[%s] running %s" % (time.strftime("%H:%M:%S"), sc.name),
              flush=True)
        o = run_one(sc, bench, args.out, args.methods, args.repeat,
                    args.seed)
        print("[%s] %s: %s in %.0f s" % (
            time.strftime("%H:%M:%S"), sc.name,
            "ok" if o.error is None else o.error, o.seconds), flush=True)
        outcomes.append(o)
        ran.append(o)
    text = table(outcomes) + "\n" + overall_text(overall(outcomes))
    with open(os.path.join(args.out, "table.rst"), "w") as f:
        f.write(text)
    summary = [{"scenario": o.scenario.name,
                "arguments": list(o.scenario.args),
                "returncode": o.returncode, "seconds": round(o.seconds, 1),
                "json": o.json_path, "error": o.error,
                "rows": rows_for(o.result) if o.result else []}
               for o in outcomes]
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"scenarios": summary, "overall": overall(outcomes)}, f,
                  indent=1)
    print(text)
    checked = outcomes if args.table_only else ran
    return 0 if all(o.error is None for o in checked) else 1


if __name__ == "__main__":
    sys.exit(main())
