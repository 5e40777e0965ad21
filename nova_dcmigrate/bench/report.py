"""Records, medians, ratios, the JSON document and the terminal table.

One record per method and repeat (schema :data:`SCHEMA`).  Times are in
seconds from the start of the run's first ``migrate`` command unless a
name says otherwise.  ``post_redirect_time_s`` runs from the first
redirect (the cancel of the attempt in progress) to completion; without
``--redirect-at`` the whole migration counts as "after the redirect" (the
decision to go to ``new`` is taken at time 0), and for ``direct`` in a
redirect scenario it is ``null`` (direct never redirects).

``lower_bound_s`` (see :mod:`nova_dcmigrate.bench.bound`) is the
scenario's bound, the same for every record of a run
(:func:`fill_scenario_bound`): the median over the run's samples.  A
sample comes from a record whose new destination counted, by final
content, the non-zero pages it needed and which of them a holder had at
the (last) redirect (agent methods); with several redirects the time
between the first and the last is added (the schedule fixes it).
Without a redirect a sample is every non-zero page of the calibrated
guest from the source.  ``time_over_bound`` is the post-redirect time
over it.  ``link_utilisation`` is the run's *own* bytes (agents'
counters, or QEMU's) at the link rates over its post-redirect time; a
wasteful run can score well on it, so it is not compared with restart.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from nova_dcmigrate.bench import bound as bnd
from nova_dcmigrate.bench import counters as ctr
from nova_dcmigrate.bench.linkstats import Series
from nova_dcmigrate.bench.methods import MigrationRun
from nova_dcmigrate.bench.options import AGENT_METHODS
from nova_dcmigrate.bench.options import BenchConfig
from nova_dcmigrate.bench.options import METHODS

SCHEMA = "nova-dcmigrate/bench/1"
#: Fields every record has (the issue's list plus ``repeat``).
RECORD_FIELDS = (
    "method", "repeat", "total_time_s", "post_redirect_time_s",
    "downtime_ms", "bytes_from_source_after_redirect", "bytes_relayed",
    "pages_deduplicated", "lower_bound_s", "time_over_bound",
    "link_utilisation", "ram_identical")
#: Record fields summarised by their median.
MEDIAN_FIELDS = (
    "total_time_s", "post_redirect_time_s", "downtime_ms",
    "bytes_from_source_after_redirect", "bytes_relayed_total",
    "pages_deduplicated", "lower_bound_s", "time_over_bound",
    "link_utilisation")
MB = 1e6


def _r(value: float | None, digits: int = 3) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(value, digits)


def own_bytes_bound(cfg: BenchConfig, run: MigrationRun
                    ) -> bnd.Bound | None:
    """The time a run's own bytes (agents' counters, or QEMU's bytes
    when there was no redirect) needed at the link rates, before adding
    inter-redirect time: the base of its link utilisation."""
    rates = cfg.rates()
    up = {h: r[0] for h, r in rates.items()}
    down = {h: r[1] for h, r in rates.items()}
    final_host = run.attempts[-1].dst_host if run.attempts else \
        cfg.final_host
    if run.counters:
        final = run.counters[-1]
        if run.redirects:
            holders = list(final.relays) or list(final.holders)
            held = final.held_bytes
        else:
            holders, held = [], 0
        return bnd.lower_bound(
            final.source_only_bytes, held,
            bnd.bytes_per_s(up["src"]), bnd.holders_rate(up, holders),
            bnd.bytes_per_s(down[final.dst_host]))
    if not cfg.redirecting and run.result is not None:
        return bnd.lower_bound(
            run.result.transferred_bytes, 0, bnd.bytes_per_s(up["src"]),
            0.0, bnd.bytes_per_s(down[final_host]))
    return None


def scenario_sample(cfg: BenchConfig, run: MigrationRun,
                    nonzero_pages: int | None) -> bnd.Bound | None:
    """One sample of the scenario's bound from this run, before adding
    inter-redirect time (see the module doc), or None."""
    rates = cfg.rates()
    up = {h: r[0] for h, r in rates.items()}
    down = {h: r[1] for h, r in rates.items()}
    if not cfg.redirecting:
        if nonzero_pages is None:
            return None
        return bnd.scenario_bound(nonzero_pages, 0,
                                  bnd.bytes_per_s(up["src"]), 0.0,
                                  bnd.bytes_per_s(down[cfg.final_host]))
    if not run.redirects or not run.counters:
        return None
    final = run.counters[-1]
    if final.needed is None:
        return None
    holders = [h for h in final.holders if h != final.dst_host]
    return bnd.scenario_bound(
        final.needed.get("source_only", 0), final.needed.get("held", 0),
        bnd.bytes_per_s(up["src"]), bnd.holders_rate(up, holders),
        bnd.bytes_per_s(down[final.dst_host]))


def build_record(cfg: BenchConfig, run: MigrationRun, repeat: int,
                 order: int, ram: Any = None, alive: bool | None = None,
                 series: Series | None = None,
                 error: str | None = None,
                 nonzero_pages: int | None = None) -> dict[str, Any]:
    """One JSON record from a finished (or failed) run.

    :param ram: a :class:`RamComparison` (``None``: not compared).
    :param nonzero_pages: of the calibrated guest (the bound without a
        redirect).
    """
    t0 = run.started
    rec: dict[str, Any] = {"method": run.method, "repeat": repeat,
                           "order": order}
    total = (run.completed - t0) if run.completed and t0 else None
    if not cfg.redirecting:
        post = total
    elif run.redirects and run.completed:
        post = run.completed - run.redirects[0].at
    else:
        post = None
    rec["total_time_s"] = _r(total)
    rec["post_redirect_time_s"] = _r(post)
    res = run.result
    rec["downtime_ms"] = res.downtime_ms if res else None

    # Bytes after the (first) redirect.
    if run.method in AGENT_METHODS:
        tot = ctr.totals(run.counters)
        from_src: int | None = tot.bytes_from_source
        rec["bytes_relayed"] = tot.bytes_relayed
        rec["relay_detail"] = tot.relay_detail
        rec["pages_deduplicated"] = tot.pages_deduplicated
        rec["local_pages_reused"] = tot.local_pages_reused
        rec["split"] = [a.split for a in run.counters if a.split]
    else:
        first = 1 if run.redirects else 0
        after = [a for a in run.attempts if a.number >= first]
        from_src = sum(a.qemu_transferred for a in after) \
            if run.result else None
        if cfg.redirecting and not run.redirects:
            from_src = None
        rec["bytes_relayed"] = {}
        rec["relay_detail"] = {}
        rec["pages_deduplicated"] = 0
        rec["local_pages_reused"] = 0
        rec["split"] = []
    rec["bytes_from_source_after_redirect"] = from_src
    rec["bytes_relayed_total"] = sum(rec["bytes_relayed"].values())

    extra = 0.0
    if len(run.redirects) > 1:
        extra = run.redirects[-1].at - run.redirects[0].at
    rec["time_between_redirects_s"] = _r(extra)
    b = own_bytes_bound(cfg, run) if run.result is not None else None
    if b is not None:
        rec["own_bytes_bound_s"] = _r(b.seconds + extra)
        rec["own_bytes_bound_term"] = b.binding_term
        rec["source_only_bytes"] = b.source_only_bytes
        rec["held_bytes"] = b.held_bytes
    else:
        rec["own_bytes_bound_s"] = None
    rec["link_utilisation"] = _r(bnd.link_utilisation(
        rec["own_bytes_bound_s"], post))
    sample = scenario_sample(cfg, run, nonzero_pages) \
        if run.result is not None and error is None else None
    if sample is not None:
        rec["bound_sample_s"] = _r(sample.seconds + extra)
        rec["bound_sample_term"] = sample.binding_term
        rec["bound_sample_terms_s"] = [_r(t) for t in sample.terms]
    else:
        rec["bound_sample_s"] = None
    rec["needed_pages"] = run.counters[-1].needed if run.counters and \
        cfg.redirecting and run.redirects else None
    # Set for every record of the run by fill_scenario_bound().
    rec["lower_bound_s"] = None
    rec["lower_bound_from"] = None
    rec["time_over_bound"] = None

    rec["ram_identical"] = bool(ram.identical) if ram is not None else False
    rec["differing_pages"] = ram.differing_pages if ram is not None else None
    rec["guest_alive_after_resume"] = alive
    # Per agent host: peak RSS and its growth, PSS, shared memory, and
    # the guest RAM held open / copied at the end of the migration.
    rec["agent_memory"] = run.agent_memory or {}
    rec["redirects"] = [
        {"t_s": _r(e.at - t0), "fraction": e.fraction,
         "from": e.from_host, "to": e.to_host,
         "qemu_transferred": e.transferred} for e in run.redirects]
    rec["skipped_redirects"] = list(run.skipped)
    rec["qemu_status_changes"] = [
        {"t_s": _r(t - t0), "host": host, "status": status}
        for t, host, status in run.status_changes]
    # The guest was paused for the switchover during the last
    # ``downtime`` ms before completion (QEMU's own timers).
    rec["switchover_started_s"] = _r(total - res.downtime_ms / 1000.0) \
        if total is not None and res is not None and res.downtime_ms \
        is not None else None
    rec["attempts"] = [
        {"number": a.number, "host": a.dst_host, "holders": a.holders,
         "started_s": _r(a.started - t0),
         "ended_s": _r(a.ended - t0) if a.ended else None,
         "outcome": a.outcome, "qemu_transferred": a.qemu_transferred}
        for a in run.attempts]
    if res is not None:
        rec["qemu"] = {"status": res.status,
                       "total_time_ms": res.total_time_ms,
                       "setup_time_ms": res.setup_time_ms,
                       "transferred": res.transferred_bytes,
                       "dirty_sync_count": res.dirty_sync_count,
                       "mbps": res.mbps,
                       "cpu_throttle_percent": res.cpu_throttle_percent}
    if series is not None:
        start = (run.redirects[0].at if run.redirects else t0) - series.t0
        rec["link_bytes_after_redirect"] = {
            h: {"up": series.bytes_between(h, "up", start),
                "down": series.bytes_between(h, "down", start)}
            for h in series.up}
        samples = series.to_json()
        samples["migration_start_s"] = _r(t0 - series.t0)
        rec["link_samples"] = samples
        rec["final_download_idle_s"] = _final_download_idle(
            cfg, run, series, rec["switchover_started_s"])
    rec["error"] = error
    rec["ok"] = error is None and rec["ram_identical"]
    return rec


def _final_download_idle(cfg: BenchConfig, run: MigrationRun,
                         series: Series,
                         switchover_s: float | None) -> float | None:
    """Seconds of the final destination's download left unused from the
    start of the last attempt to the switchover (None: not known, or the
    link is not shaped)."""
    if not run.attempts or switchover_s is None or not run.started:
        return None
    last = run.attempts[-1]
    down = cfg.rates().get(last.dst_host, (None, None))[1]
    if not down:
        return None
    start = last.started - series.t0
    end = run.started + switchover_s - series.t0
    return _r(series.idle_seconds(last.dst_host, "down", start, end,
                                  down / 8.0))


def fill_scenario_bound(records: list[dict[str, Any]]) -> None:
    """Give every record the scenario's bound: the median of the run's
    samples (identical for every method), and its time over it."""
    samples = [r["bound_sample_s"] for r in records
               if r.get("bound_sample_s") is not None and r.get("ok")]
    if not samples:
        samples = [r["bound_sample_s"] for r in records
                   if r.get("bound_sample_s") is not None]
    if not samples:
        return
    scenario = bnd.median(samples)
    terms = sorted({r["bound_sample_term"] for r in records
                    if r.get("bound_sample_term")})
    for r in records:
        r["lower_bound_s"] = _r(scenario)
        r["lower_bound_from"] = "median of %d samples" % len(samples)
        r["lower_bound_term"] = "/".join(terms)
        r["time_over_bound"] = _r(bnd.ratio(r.get("post_redirect_time_s"),
                                            scenario))


def summarize(records: Sequence[Mapping[str, Any]],
              methods: Iterable[str]) -> dict[str, Any]:
    """Medians per method and each method's ratio to ``restart``."""
    per: dict[str, Any] = {}
    for method in methods:
        recs = [r for r in records if r["method"] == method]
        good = [r for r in recs if r.get("ok")]
        med = {f: _r(bnd.median(r.get(f) for r in good))
               for f in MEDIAN_FIELDS}
        per[method] = {"runs": len(recs), "ok_runs": len(good),
                       "ram_identical_all": bool(recs) and all(
                           r.get("ram_identical") for r in recs),
                       "median": med}
    ref = per.get("restart", {}).get("median", {})
    for method, s in per.items():
        s["ratio_to_restart"] = {
            f: _r(bnd.ratio(s["median"].get(f), ref.get(f)))
            for f in ("post_redirect_time_s", "total_time_s",
                      "bytes_from_source_after_redirect")} if ref else None
    best = None
    if ref and "dcmigrate" in per:
        best = _r(bnd.ratio(per["dcmigrate"]["median"]["lower_bound_s"],
                            ref.get("post_redirect_time_s")))
    return {"methods": per, "bound_to_restart_ratio": best}


def document(cfg: BenchConfig, records: list[dict[str, Any]],
             calibration: Mapping[str, Any] | None,
             environment: Mapping[str, Any]) -> dict[str, Any]:
    """The whole JSON document."""
    return {
        "schema": SCHEMA,
        "config": cfg.describe(),
        "links_bit_per_s": {h: {"up": r[0], "down": r[1]}
                            for h, r in cfg.rates().items()},
        "environment": dict(environment),
        "calibration": dict(calibration or {}),
        "records": records,
        "summary": summarize(records, [m for m in METHODS
                                       if m in cfg.methods]),
        "ok": bool(records) and all(r.get("ok") for r in records),
    }


def write_json(path: str | Path, doc: Mapping[str, Any]) -> None:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


def check_record(rec: Mapping[str, Any]) -> list[str]:
    """Schema problems of one record (empty: fine)."""
    problems = [f"missing {f}" for f in RECORD_FIELDS if f not in rec]
    if rec.get("method") not in METHODS:
        problems.append("unknown method %r" % rec.get("method"))
    if not isinstance(rec.get("bytes_relayed", {}), dict):
        problems.append("bytes_relayed is not a mapping")
    if not isinstance(rec.get("ram_identical"), bool):
        problems.append("ram_identical is not a bool")
    for f in ("total_time_s", "post_redirect_time_s", "lower_bound_s",
              "time_over_bound", "link_utilisation"):
        v = rec.get(f)
        if v is not None and not isinstance(v, (int, float)):
            problems.append("%s is not a number" % f)
    return problems


# -- terminal ---------------------------------------------------------------

def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return "%.*f" % (digits, v)
    return str(v)


def _mb(v: Any) -> str:
    return "-" if v is None else "%.0f" % (v / MB)


TABLE_HEADERS = ("method", "run", "total s", "after redirect s",
                 "downtime ms", "from src MB", "relayed MB", "dedup pages",
                 "bound s", "x bound", "link util", "RAM same")


def table_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for r in doc["records"]:
        rows.append([
            r["method"], str(r["repeat"]), _fmt(r.get("total_time_s")),
            _fmt(r.get("post_redirect_time_s")),
            _fmt(r.get("downtime_ms")),
            _mb(r.get("bytes_from_source_after_redirect")),
            _mb(r.get("bytes_relayed_total")) if r.get("bytes_relayed")
            else "-",
            _fmt(r.get("pages_deduplicated")) if r["method"] in
            AGENT_METHODS else "-",
            _fmt(r.get("lower_bound_s")),
            _fmt(r.get("time_over_bound"), 2),
            _fmt(r.get("link_utilisation"), 2),
            _fmt(r.get("ram_identical")) if not r.get("error") else
            "ERROR"])
    return rows


def summary_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for method, s in doc["summary"]["methods"].items():
        m = s["median"]
        ratio = (s.get("ratio_to_restart") or {}).get(
            "post_redirect_time_s")
        rows.append([
            method, str(s["ok_runs"]) + "/" + str(s["runs"]),
            _fmt(m.get("total_time_s")), _fmt(m.get("post_redirect_time_s")),
            _fmt(m.get("downtime_ms"), 0),
            _mb(m.get("bytes_from_source_after_redirect")),
            _mb(m.get("bytes_relayed_total")) if m.get("bytes_relayed_total")
            else "-",
            _fmt(m.get("lower_bound_s")), _fmt(m.get("time_over_bound"), 2),
            _fmt(m.get("link_utilisation"), 2),
            "-" if ratio is None else "%.2fx" % ratio])
    return rows


SUMMARY_HEADERS = ("method", "ok", "total s", "after redirect s",
                   "downtime ms", "from src MB", "relayed MB", "bound s",
                   "x bound", "link util", "vs restart")


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                indent: str = "  ") -> str:
    cells = [list(headers)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        parts = [c.ljust(w) if i == 0 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(r, widths))]
        lines.append(indent + "  ".join(parts).rstrip())
        if n == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def explanation(doc: Mapping[str, Any]) -> list[str]:
    """A few sentences on what the numbers mean, for newcomers."""
    cfg = doc["config"]
    summ = doc["summary"]["methods"]
    lines: list[str] = []
    if not cfg["redirect_at"]:
        lines.append("No redirect: every method migrated once to 'new'; "
                     "compare dcmigrate with direct for the agents' "
                     "overhead.")
        return lines
    dc = summ.get("dcmigrate") or summ.get("relay-only")
    rs = summ.get("restart")
    recs = [r for r in doc["records"] if r["method"] in AGENT_METHODS
            and r.get("ok")]
    if dc and rs:
        d, r = dc["median"], rs["median"]
        name = "dcmigrate" if "dcmigrate" in summ else "relay-only"
        if d.get("post_redirect_time_s") and r.get("post_redirect_time_s"):
            lines.append(
                "After the redirect, %s finished in %.1f s, restart in "
                "%.1f s (%.2fx)." % (
                    name, d["post_redirect_time_s"],
                    r["post_redirect_time_s"],
                    d["post_redirect_time_s"] / r["post_redirect_time_s"]))
        if d.get("downtime_ms") is not None and \
                r.get("downtime_ms") is not None:
            lines.append(
                "The guest was paused for %.0f ms (median) at the "
                "switchover with %s, %.0f ms with restart." % (
                    d["downtime_ms"], name, r["downtime_ms"]))
        if d.get("bytes_from_source_after_redirect") and \
                r.get("bytes_from_source_after_redirect"):
            lines.append(
                "The source sent %s MB after the redirect with %s and %s "
                "MB with restart; the old destination relayed %s MB in "
                "parallel." % (
                    _mb(d["bytes_from_source_after_redirect"]), name,
                    _mb(r["bytes_from_source_after_redirect"]),
                    _mb(d.get("bytes_relayed_total") or 0)))
    terms = sorted({r.get("lower_bound_term") for r in doc["records"]
                    if r.get("lower_bound_term")})
    if terms:
        lines.append(
            "Lower bound set by: %s (the pages the new destination needed "
            "by final content at the link rates, the same for every "
            "method; x bound = time after redirect / bound; link util = "
            "the run's own bytes at the link rates / its time)."
            % ", ".join(terms))
    elif recs:
        lines.append("No scenario bound: no run reported the pages it "
                     "needed.")
    best = doc["summary"].get("bound_to_restart_ratio")
    if best is not None:
        lines.append("Even a perfect redirect could at best reach %.2fx "
                     "of restart's time here." % best)
    return lines


def render_text(doc: Mapping[str, Any]) -> str:
    out = ["Runs:", plain_table(TABLE_HEADERS, table_rows(doc)), "",
           "Medians (vs restart: post-redirect time / restart's):",
           plain_table(SUMMARY_HEADERS, summary_rows(doc)), ""]
    out += explanation(doc)
    out.append("RAM identical in every run." if doc["ok"] else
               "ERROR: a run failed or its RAM differed (see 'RAM same').")
    return "\n".join(out)


def print_rich(doc: Mapping[str, Any], console: Any) -> None:
    from rich.table import Table

    for title, headers, rows in (
            ("Runs", TABLE_HEADERS, table_rows(doc)),
            ("Medians (vs restart = post-redirect time / restart's)",
             SUMMARY_HEADERS, summary_rows(doc))):
        t = Table(title=title, title_justify="left")
        for i, h in enumerate(headers):
            t.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            style = "red" if ("ERROR" in row or "NO" in row) else None
            t.add_row(*row, style=style)
        console.print(t)
    for line in explanation(doc):
        console.print(line, highlight=False)
    console.print("[green]RAM identical in every run.[/green]" if doc["ok"]
                  else "[red]ERROR: a run failed or its RAM differed.[/red]")


def asdict_safe(obj: Any) -> Any:
    """dataclasses -> dicts for JSON (used for calibration)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj
