"""The PNG: what crossed each link over time, and who finished when.

Top panels, one per method (its first successful run): throughput of
every link that carried migration traffic, from the hosts' interface
counters, with the redirect(s) and the completion marked.  Bottom panel:
time after the (first) redirect per method -- bar = median, dots = single
runs -- with the lower bound drawn as a red line across each bar.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

#: Seconds of the moving average applied to the 100 ms samples.
SMOOTH_S = 0.5
#: Colours per (host, direction); other hosts cycle through the rest.
_COLOURS = {("src", "up"): "#d62728", ("old", "up"): "#2ca02c",
            ("old", "down"): "#98df8a", ("new", "down"): "#1f77b4",
            ("new", "up"): "#17becf"}
_OTHER = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#ff7f0e"]
_METHOD_COLOURS = {"dcmigrate": "#1f77b4", "relay-only": "#17becf",
                   "restart": "#ff7f0e", "direct": "#7f7f7f"}


def _smooth(times: Sequence[float], values: Sequence[float],
            window_s: float = SMOOTH_S) -> list[float]:
    out = []
    start = 0
    total = 0.0
    for i, v in enumerate(values):
        total += v
        while times[i] - times[start] >= window_s:
            total -= values[start]
            start += 1
        out.append(total / (i - start + 1))
    return out


def _series_rates(samples: Mapping[str, Any], host: str, direction: str
                  ) -> tuple[list[float], list[float]]:
    """(times since migration start, Mbit/s) from a record's samples."""
    t = samples["t"]
    deltas = samples["%s_bytes" % direction].get(host, [])
    offset = samples.get("migration_start_s") or 0.0
    times, rates = [], []
    for i, d in enumerate(deltas):
        dt = t[i + 1] - t[i]
        if dt <= 0:
            continue
        times.append((t[i] + t[i + 1]) / 2 - offset)
        rates.append(d * 8 / dt / 1e6)
    return times, rates


def _label(host: str, direction: str, route: Sequence[str]) -> str:
    if host == "src":
        return "src upload (source sends)" if direction == "up" else \
            "src download"
    role = "old destination" if route and host == route[0] and \
        len(route) > 1 else "destination"
    if direction == "up":
        return "%s upload (relays held pages)" % host
    return "%s download (%s receives)" % (host, role)


def _colour(host: str, direction: str, used: dict[tuple[str, str], str]
            ) -> str:
    key = (host, direction)
    if key in _COLOURS:
        return _COLOURS[key]
    if key not in used:
        used[key] = _OTHER[len(used) % len(_OTHER)]
    return used[key]


def plot(doc: Mapping[str, Any], path: str) -> None:
    """Write the PNG for a benchmark document (see module doc)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = doc["config"]
    route = cfg["route"]
    redirecting = bool(cfg["redirect_at"])
    records = doc["records"]
    methods = [m for m in doc["summary"]["methods"]]
    shown = []
    for m in methods:
        recs = [r for r in records if r["method"] == m and r.get("ok")
                and r.get("link_samples")] or \
            [r for r in records if r["method"] == m and
             r.get("link_samples")]
        if recs:
            shown.append(recs[0])
    n = len(shown)
    height = 2.6 * n + 4.6
    fig = plt.figure(figsize=(13, height), dpi=100)
    heights = [2.6] * n + [3.4]
    gs = fig.add_gridspec(n + 1, 1, height_ratios=heights, hspace=0.6,
                          top=1 - 0.95 / height, bottom=0.5 / height)
    links = ", ".join("%s %s" % (h, r) for h, r in cfg["links"].items())
    title = ("Live migration of a %d MiB guest (dirtying %d MiB at %d "
             "MiB/s)" % (cfg["memory_mib"], cfg["dirty_mib"],
                         cfg["dirty_rate"]))
    if redirecting:
        title += ", redirected at %s of a first pass" % ", ".join(
            str(f) for f in cfg["redirect_at"])
    fig.suptitle(title + "\nlinks (upload/download): " + links,
                 fontsize=11)

    xmax = 0.0
    for r in shown:
        xmax = max(xmax, (r.get("total_time_s") or 0) + 1.0)
    axes: list[Any] = []
    colours_used: dict[tuple[str, str], str] = {}
    for i, rec in enumerate(shown):
        ax = fig.add_subplot(gs[i, 0], sharex=axes[0] if axes else None)
        axes.append(ax)
        samples = rec["link_samples"]
        hosts = list(samples["up_bytes"])
        # Uploads of the source and of hosts that relayed; downloads of
        # destinations (the rest is acknowledgements and RPC).
        relayed = set(rec.get("bytes_relayed") or {})
        for host in hosts:
            for direction in ("up", "down"):
                if direction == "up" and not (host == "src" or
                                              host in relayed):
                    continue
                if direction == "down" and host == "src":
                    continue
                times, rates = _series_rates(samples, host, direction)
                if not rates or max(rates) < 2.0:
                    continue
                ax.plot(times, _smooth(times, rates),
                        color=_colour(host, direction, colours_used),
                        lw=2.6 if host == "src" else 1.5,
                        ls="-" if direction == "down" or
                        host == "src" else "--",
                        label=_label(host, direction, route))
        for ev in rec.get("redirects", []):
            ax.axvline(ev["t_s"], color="black", lw=1.2, ls=":")
            ax.annotate("redirect \u2192 %s" % ev["to"],
                        xy=(ev["t_s"], 1.0),
                        xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points",
                        fontsize=8)
        sw = rec.get("switchover_started_s")
        if sw is not None and rec.get("total_time_s"):
            ax.axvspan(sw, rec["total_time_s"], color="grey", alpha=0.25,
                       lw=0, label="guest paused (downtime %s ms)"
                       % rec.get("downtime_ms"))
        if rec.get("total_time_s"):
            ax.axvline(rec["total_time_s"], color="grey", lw=1.0, ls="-.")
            ax.annotate("done", xy=(rec["total_time_s"], 1.0),
                        xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points",
                        fontsize=8, color="grey")
        post = rec.get("post_redirect_time_s")
        head = "%s (run %d): total %.1f s" % (
            rec["method"], rec["repeat"], rec.get("total_time_s") or 0)
        if redirecting and post is not None:
            head += ", %.1f s after the redirect" % post
        ax.set_title(head, fontsize=10, loc="left")
        ax.set_ylabel("Mbit/s\n(%.1f s avg)" % SMOOTH_S, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0)
    if axes:
        axes[-1].set_xlabel("seconds since the migration started")
        axes[0].set_xlim(0, xmax)
        # One rate scale for every panel, so that panels compare.
        top = max(ax.get_ylim()[1] for ax in axes)
        for ax in axes:
            ax.set_ylim(0, top)

    # Bars: time after the redirect (or total time) per method.
    ax = fig.add_subplot(gs[n, 0])
    field = "post_redirect_time_s" if redirecting else "total_time_s"
    summary = doc["summary"]["methods"]
    names, medians, bounds = [], [], []
    for m in methods:
        med = summary[m]["median"].get(field)
        if med is None:
            continue
        names.append(m)
        medians.append(med)
        bounds.append(summary[m]["median"].get("lower_bound_s"))
    xs = list(range(len(names)))
    ax.bar(xs, medians, width=0.55,
           color=[_METHOD_COLOURS.get(m, "#999999") for m in names],
           alpha=0.85)
    for x, m in zip(xs, names):
        vals = [r.get(field) for r in records if r["method"] == m and
                r.get("ok") and r.get(field) is not None]
        ax.scatter([x] * len(vals), vals, color="black", s=14, zorder=3,
                   label="single runs" if x == 0 else None)
    drew_bound = False
    for x, b in zip(xs, bounds):
        if b is None:
            continue
        ax.hlines(b, x - 0.36, x + 0.36, colors="red", lw=2.2, zorder=4,
                  label="_nolegend_" if drew_bound else
                  "lower bound (no method can be faster)")
        drew_bound = True
    ref = summary.get("restart", {}).get("median", {}).get(field)
    tops = []
    for x, m, v in zip(xs, names, medians):
        vals = [r.get(field) for r in records if r["method"] == m and
                r.get("ok") and r.get(field) is not None]
        top = max([v] + vals)
        tops.append(top)
        text = "%.1f s" % v
        if ref and m != "restart":
            text += " = %.2fx restart" % (v / ref)
        ax.annotate(text, xy=(x, top), xytext=(0, 5),
                    textcoords="offset points", ha="center", fontsize=9,
                    fontweight="bold")
    ax.set_xticks(xs, names)
    ax.set_ylabel("seconds")
    ax.set_ylim(0, max(tops + [b for b in bounds if b] + [1.0]) * 1.3)
    what = "of the migration"
    if redirecting:
        what = "from the %sredirect to completion" % (
            "first " if len(cfg["redirect_at"]) > 1 else "")
    ax.set_title("time %s (shorter is better), median of %d run(s) per "
                 "method" % (what, cfg["repeat"]), fontsize=10, loc="left")
    ax.grid(axis="y", alpha=0.3)
    if names:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
