"""Command line of dcmigrate-bench and the validated configuration.

Hosts: the guest always starts on ``src``.  A migration with ``k``
redirects visits ``k + 1`` destinations; by default ``old``, ``new``, then
fresh hosts ``new2``, ``new3`` ... (every redirect goes to a host that holds
nothing yet, the case where aborting loses everything).  ``--route`` picks
another order, e.g. ``old,new,old`` to come back to a host that still holds
pages.  A host without ``--link`` gets the default link of its role
(``newN`` inherits ``new``'s).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Sequence

from nova_dcmigrate.lab import exception as lab_exc
from nova_dcmigrate.lab import topology

#: Methods in the order they are listed and tabulated.
METHODS = ("dcmigrate", "relay-only", "restart", "direct")
METHOD_HELP = {
    "dcmigrate": "redirect through the agents: holders relay what they "
                 "have, optimised split between source and holders",
    "relay-only": "redirect through the agents, holders relay everything "
                  "they hold (no optimised split)",
    "restart": "abort, then migrate to the new host from scratch (what "
               "Nova users do today)",
    "direct": "no redirect: plain QEMU-to-QEMU migration to the final "
              "host (reference)",
}
#: Methods that run through the dcmigrate agents.
AGENT_METHODS = frozenset({"dcmigrate", "relay-only"})

#: The demo's defaults (``make demo``): about 2-3 minutes on 2 cores.
DEFAULT_MEMORY_MIB = 256
DEFAULT_DIRTY_MIB = 32
DEFAULT_DIRTY_RATE = 8
DEFAULT_REDIRECT_AT = "0.5"
DEFAULT_METHODS = "dcmigrate,restart"
DEFAULT_REPEAT = 2
#: Slow source, fast old destination, fast new destination: the case
#: DCmigrate was made for (the old destination relays what it holds at
#: its own rate while the source sends only the rest).
DEFAULT_LINKS = {"src": "100mbit", "old": "1gbit", "new": "1gbit"}
DEFAULT_DOWNTIME_MS = 300

_HOST_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")


class OptionError(ValueError):
    """A command-line value that cannot be used."""


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run needs to know, validated."""

    memory_mib: int = DEFAULT_MEMORY_MIB
    dirty_mib: int = DEFAULT_DIRTY_MIB
    dirty_rate: int = DEFAULT_DIRTY_RATE
    #: Fractions of the first attempt's first pass; empty: no redirect.
    redirect_at: tuple[float, ...] = (0.5,)
    #: Destinations in order; ``len(redirect_at) + 1`` of them.
    route: tuple[str, ...] = ("old", "new")
    #: Lab host -> link ("RATE" or "UP/DOWN"), every host of the run.
    links: dict[str, str] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_LINKS))
    methods: tuple[str, ...] = ("dcmigrate", "restart")
    repeat: int = DEFAULT_REPEAT
    via: str = "libvirt"
    json_path: str | None = None
    plot_path: str | None = None
    #: Shuffle the method order of every repeat with this seed (None:
    #: the order given).
    seed: int | None = None
    downtime_ms: int = DEFAULT_DOWNTIME_MS
    auto_converge: bool = False
    timeout_s: float = 300.0
    boot_timeout_s: float = 120.0
    settle_s: float = 2.0
    debug: bool = False
    keep_workdir: bool = False
    cache_dir: str | None = None
    #: Re-render a former run's JSON instead of running (no root needed).
    from_json: str | None = None

    @property
    def redirecting(self) -> bool:
        return bool(self.redirect_at)

    @property
    def final_host(self) -> str:
        return self.route[-1]

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every lab host: the source, then the route without repeats."""
        seen = ["src"]
        for host in self.route:
            if host not in seen:
                seen.append(host)
        return tuple(seen)

    def rates(self) -> dict[str, tuple[int | None, int | None]]:
        """Host -> (upload, download) in bit/s (``None``: unshaped)."""
        return {h: topology.parse_link(_none(self.links[h]))
                for h in self.hosts}

    def describe(self) -> dict[str, object]:
        """JSON-friendly view (paths and knobs as given)."""
        out = dataclasses.asdict(self)
        out["redirect_at"] = list(self.redirect_at)
        out["route"] = list(self.route)
        out["methods"] = list(self.methods)
        return out


def _none(link: str) -> str | None:
    return None if link in ("none", "") else link


def default_route(redirects: int) -> tuple[str, ...]:
    """``old``, ``new``, ``new2``, ``new3`` ... for ``redirects`` redirects;
    just ``new`` without a redirect."""
    if redirects == 0:
        return ("new",)
    route = ["old", "new"]
    for n in range(2, redirects + 1):
        route.append("new%d" % n)
    return tuple(route)


def default_link(host: str, links: dict[str, str]) -> str:
    if host in DEFAULT_LINKS:
        return DEFAULT_LINKS[host]
    if host.startswith("new") and "new" in links:
        return links["new"]
    return DEFAULT_LINKS["new"]


def parse_fractions(text: str | None) -> tuple[float, ...]:
    """"0.3,0.6" -> (0.3, 0.6); empty or "none" -> () (no redirect)."""
    if text is None or text.strip().lower() in ("", "none"):
        return ()
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise OptionError("--redirect-at: %r is not a number" % part)
        if not 0.0 < value <= 5.0:
            raise OptionError("--redirect-at: %s is outside (0, 5]" % part)
        values.append(value)
    if any(b <= a for a, b in zip(values, values[1:])):
        raise OptionError("--redirect-at: fractions must increase")
    return tuple(values)


def parse_links(items: Sequence[str]) -> dict[str, str]:
    """["src=100mbit", "old=300mbit/1gbit"] -> {"src": ..., "old": ...}."""
    links: dict[str, str] = {}
    for item in items:
        for token in item.replace(",", " ").split():
            host, sep, rate = token.partition("=")
            if not sep or not host or not rate:
                raise OptionError("--link: use HOST=RATE or HOST=UP/DOWN, "
                                  "got %r" % token)
            try:
                topology.parse_link(_none(rate))
            except lab_exc.InvalidLabSpec as err:
                raise OptionError("--link %s: %s" % (token, err))
            links[host] = rate
    return links


def parse_methods(text: str) -> tuple[str, ...]:
    methods = []
    for name in text.split(","):
        name = name.strip()
        if name not in METHODS:
            raise OptionError("--methods: unknown method %r (choose from "
                              "%s)" % (name, ", ".join(METHODS)))
        if name not in methods:
            methods.append(name)
    if not methods:
        raise OptionError("--methods: name at least one method")
    return tuple(methods)


def parse_route(text: str | None, redirects: int) -> tuple[str, ...]:
    if not text:
        return default_route(redirects)
    route = tuple(h.strip() for h in text.split(",") if h.strip())
    if len(route) != redirects + 1:
        raise OptionError("--route: %d redirect(s) need %d destinations, "
                          "got %d" % (redirects, redirects + 1, len(route)))
    for a, b in zip(route, route[1:]):
        if a == b:
            raise OptionError("--route: %s follows itself" % a)
    for host in route:
        if host == "src" or not _HOST_RE.match(host):
            raise OptionError("--route: bad destination %r (lowercase "
                              "letters and digits, not 'src')" % host)
    return route


def build_parser() -> argparse.ArgumentParser:
    methods_help = "; ".join("%s: %s" % (m, METHOD_HELP[m]) for m in METHODS)
    parser = argparse.ArgumentParser(
        prog="dcmigrate-bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Live-migrate a real QEMU guest between emulated hosts "
            "(network namespaces with shaped links), redirect it "
            "mid-flight, and compare DCmigrate with aborting and "
            "restarting.  Every run boots a fresh guest on host 'src' and "
            "checks the migrated RAM byte for byte.  Needs root."),
        epilog=(
            "hosts: the guest starts on 'src'; the route is old -> new "
            "(-> new2 -> new3 ... for more redirects), or --route.\n"
            "progress: a redirect at F fires when the first attempt has "
            "sent F times the bytes of one full first pass (measured once "
            "per run from the guest's non-zero pages); later redirects "
            "fire when the first attempt would have reached their "
            "fraction at the rate it had.\n"
            "with --redirect-at none every method migrates once to 'new' "
            "(dcmigrate: through the agents), which measures the agents' "
            "overhead against 'direct'.\n"
            "every run checks the migrated RAM byte for byte; a run whose "
            "RAM differs is an error (exit status 1).\n\n"
            "example (the paper's case, slow source, fast old "
            "destination):\n"
            "  dcmigrate-bench --memory 512 --dirty-mib 32 --dirty-rate "
            "8 --redirect-at 0.5 \\\n"
            "      --link src=100mbit old=1gbit new=300mbit --methods "
            "dcmigrate,relay-only,restart,direct \\\n"
            "      --repeat 3 --json out.json --plot out.png"))
    g = parser.add_argument_group("guest")
    g.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MIB,
                   metavar="MIB", help="guest RAM in MiB (default "
                   "%(default)s)")
    g.add_argument("--dirty-mib", type=int, default=DEFAULT_DIRTY_MIB,
                   metavar="N", help="MiB the guest keeps dirtying "
                   "(default %(default)s; 0: idle guest)")
    g.add_argument("--dirty-rate", type=int, default=DEFAULT_DIRTY_RATE,
                   metavar="MIB/S", help="dirtying rate in MiB/s (default "
                   "%(default)s; 0: as fast as the vCPU can)")
    s = parser.add_argument_group("scenario")
    s.add_argument("--redirect-at", default=DEFAULT_REDIRECT_AT,
                   metavar="F[,F...]",
                   help="redirect when the first attempt reached these "
                        "fractions of a full first pass; several: "
                        "successive redirects; 'none': no redirect "
                        "(default %(default)s)")
    s.add_argument("--route", default=None, metavar="HOST,HOST...",
                   help="destinations in order (default old,new[,new2...])")
    s.add_argument("--link", action="extend", nargs="+", default=[],
                   metavar="HOST=RATE",
                   help="a host's link: RATE for both directions or "
                        "UP/DOWN, e.g. src=100mbit old=300mbit/1gbit "
                        "(default: %s; newN like new)"
                   % " ".join("%s=%s" % kv for kv in DEFAULT_LINKS.items()))
    s.add_argument("--methods", default=DEFAULT_METHODS,
                   metavar="M[,M...]",
                   help="methods to compare (default %(default)s): "
                        + methods_help)
    s.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                   metavar="N", help="runs per method (default "
                   "%(default)s)")
    s.add_argument("--seed", type=int, default=None,
                   help="shuffle the order of the methods within each "
                        "repeat with this seed (default: the order given "
                        "in --methods, every repeat)")
    s.add_argument("--via", choices=("libvirt", "qmp"), default="libvirt",
                   help="libvirt (default): the guest is a libvirt "
                        "domain, every lab host runs a libvirtd, every "
                        "migration is a libvirt live migration (restart "
                        "goes through the agents too, from scratch); qmp: "
                        "bare QEMU processes driven over QMP (restart and "
                        "direct are QEMU-to-QEMU)")
    m = parser.add_argument_group("migration")
    m.add_argument("--downtime-limit", type=int, default=DEFAULT_DOWNTIME_MS,
                   metavar="MS", help="QEMU downtime-limit for every method "
                   "(default %(default)s, QEMU's own default)")
    m.add_argument("--auto-converge", action="store_true",
                   help="enable QEMU's auto-converge for every method")
    m.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="give up on a migration after S seconds (default "
                        "%(default)s)")
    m.add_argument("--boot-timeout", type=float, default=120.0,
                   metavar="S")
    m.add_argument("--settle", type=float, default=2.0, metavar="S",
                   help="seconds the guest dirties before the migration "
                        "starts (default %(default)s)")
    o = parser.add_argument_group("output")
    o.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                   help="write every record, medians and ratios as JSON")
    o.add_argument("--plot", dest="plot_path", default=None, metavar="PATH",
                   help="write a PNG: link throughput over time and "
                        "post-redirect time per method with the bound")
    o.add_argument("--from-json", default=None, metavar="PATH",
                   help="run nothing: print the table of a former run's "
                        "JSON and write its --plot")
    o.add_argument("--debug", action="store_true",
                   help="log at DEBUG level (to stderr)")
    o.add_argument("--keep-workdir", action="store_true",
                   help="keep the lab's QEMU and agent logs")
    o.add_argument("--cache-dir", default=None,
                   help="guest image cache root")
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Validate parsed arguments.

    :raises OptionError: with a message for the user.
    """
    if args.memory < 64:
        raise OptionError("--memory: at least 64 MiB")
    if args.dirty_mib < 0 or args.dirty_rate < 0:
        raise OptionError("--dirty-mib and --dirty-rate cannot be negative")
    if args.dirty_mib and args.dirty_mib >= args.memory - 32:
        raise OptionError("--dirty-mib must stay 32 MiB below --memory "
                          "(kernel and initramfs)")
    if args.repeat < 1:
        raise OptionError("--repeat: at least 1")
    if args.downtime_limit < 1:
        raise OptionError("--downtime-limit: at least 1 ms")
    fractions = parse_fractions(args.redirect_at)
    route = parse_route(args.route, len(fractions))
    methods = parse_methods(args.methods)
    given = parse_links(args.link)
    hosts = ["src"] + [h for i, h in enumerate(route) if h not in route[:i]]
    # Links of the usual hosts may stay in a command line whose scenario
    # does not use them (e.g. --redirect-at none); anything else is a typo.
    usual = re.compile(r"^(src|old|new[0-9]*)$")
    unknown = sorted(h for h in given if h not in hosts
                     and not usual.match(h))
    if unknown:
        raise OptionError("--link: %s not in this run (hosts: %s)"
                          % (", ".join(unknown), " ".join(hosts)))
    links = {}
    for host in hosts:
        links[host] = given.get(host) or default_link(host, given)
    return BenchConfig(
        memory_mib=args.memory, dirty_mib=args.dirty_mib,
        dirty_rate=args.dirty_rate, redirect_at=fractions, route=route,
        links=links, methods=methods, repeat=args.repeat, via=args.via,
        json_path=args.json_path, plot_path=args.plot_path, seed=args.seed,
        downtime_ms=args.downtime_limit, auto_converge=args.auto_converge,
        timeout_s=args.timeout, boot_timeout_s=args.boot_timeout,
        settle_s=args.settle, debug=args.debug,
        keep_workdir=args.keep_workdir, cache_dir=args.cache_dir,
        from_json=args.from_json)


def parse(argv: Sequence[str] | None = None) -> BenchConfig:
    """Parse and validate; argparse-style exit (status 2) on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return config_from_args(args)
    except OptionError as err:
        parser.error(str(err))
        raise  # not reached: parser.error exits
