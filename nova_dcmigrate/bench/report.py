"""Records, medians, ratios, the JSON document and the terminal table.

One record per method and repeat (schema :data:`SCHEMA`).  Times are in
seconds from the start of the run's first ``migrate`` command unless a
name says otherwise.  ``post_redirect_time_s`` runs from the first
redirect (the cancel of the attempt in progress) to completion; without
``--redirect-at`` the whole migration counts as "after the redirect" (the
decision to go to ``new`` is taken at time 0), and for ``direct`` in a
redirect scenario it is ``null`` (direct never redirects).

``lower_bound_s`` (see :mod:`nova_dcmigrate.bench.bound`) comes from the
record's own agent counters (``lower_bound_from: "measured"``); with
several redirects the time between the first and the last redirect is
added (the scenario fixes it; no method can shorten it).  Records of
methods without agents borrow the median bound of the run's ``dcmigrate``
(else ``relay-only``) records, since the bound belongs to the scenario,
not to a method (``lower_bound_from: "dcmigrate"``); without a redirect
every method measures its own (bytes sent / slowest link).
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
    "pages_deduplicated", "lower_bound_s", "efficiency", "ram_identical")
#: Record fields summarised by their median.
MEDIAN_FIELDS = (
    "total_time_s", "post_redirect_time_s", "downtime_ms",
    "bytes_from_source_after_redirect", "bytes_relayed_total",
    "pages_deduplicated", "lower_bound_s", "efficiency")
MB = 1e6


def _r(value: float | None, digits: int = 3) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(value, digits)


def measured_bound(cfg: BenchConfig, run: MigrationRun
                   ) -> bnd.Bound | None:
    """The bound from a run's own counters (agents' counters, or QEMU's
    bytes when there was no redirect), before adding inter-redirect
    time."""
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


def build_record(cfg: BenchConfig, run: MigrationRun, repeat: int,
                 order: int, ram: Any = None, alive: bool | None = None,
                 series: Series | None = None,
                 error: str | None = None) -> dict[str, Any]:
    """One JSON record from a finished (or failed) run.

    :param ram: a :class:`RamComparison` (``None``: not compared).
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

    b = measured_bound(cfg, run) if run.result is not None else None
    if b is not None:
        extra = 0.0
        if len(run.redirects) > 1:
            extra = run.redirects[-1].at - run.redirects[0].at
        rec["lower_bound_s"] = _r(b.seconds + extra)
        rec["lower_bound_from"] = "measured"
        rec["lower_bound_term"] = b.binding_term
        rec["lower_bound_terms_s"] = [_r(t) for t in b.terms]
        rec["source_only_bytes"] = b.source_only_bytes
        rec["held_bytes"] = b.held_bytes
        rec["needed_bytes"] = b.total_bytes
        rec["time_between_redirects_s"] = _r(extra)
    else:
        rec["lower_bound_s"] = None
        rec["lower_bound_from"] = None
    rec["efficiency"] = _r(bnd.efficiency(rec["lower_bound_s"], post))

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
    rec["error"] = error
    rec["ok"] = error is None and rec["ram_identical"]
    return rec


def fill_borrowed_bounds(records: list[dict[str, Any]]) -> None:
    """Give records without a measured bound the scenario's bound (median
    of the dcmigrate records, else relay-only) and their efficiency."""
    for source in ("dcmigrate", "relay-only"):
        values = [r["lower_bound_s"] for r in records
                  if r["method"] == source and r.get("lower_bound_s")
                  is not None and r.get("lower_bound_from") == "measured"]
        if values:
            break
    else:
        return
    scenario = bnd.median(values)
    for r in records:
        if r.get("lower_bound_s") is None and \
                r.get("post_redirect_time_s") is not None:
            r["lower_bound_s"] = _r(scenario)
            r["lower_bound_from"] = source
            r["efficiency"] = _r(bnd.efficiency(
                scenario, r["post_redirect_time_s"]))


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
              "efficiency"):
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
                 "bound s", "efficiency", "RAM same")


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
            _fmt(r.get("efficiency"), 2),
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
            _fmt(m.get("lower_bound_s")), _fmt(m.get("efficiency"), 2),
            "-" if ratio is None else "%.2fx" % ratio])
    return rows


SUMMARY_HEADERS = ("method", "ok", "total s", "after redirect s",
                   "downtime ms", "from src MB", "relayed MB", "bound s",
                   "efficiency", "vs restart")


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
    if recs:
        terms = sorted({r.get("lower_bound_term") for r in recs
                        if r.get("lower_bound_term")})
        if terms:
            lines.append(
                "Lower bound set by: %s (no method can beat the bound; "
                "efficiency = bound / time after redirect)."
                % ", ".join(terms))
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
