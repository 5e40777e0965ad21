"""Per-host link byte counters, sampled while a run goes.

Every lab host hangs off the bridge by a veth pair whose bridge-side end
(:attr:`LabHost.bridge_port`) lives in the root namespace.  What the host
sends arrives there (``rx_bytes``: the host's upload) and what it receives
leaves from there (``tx_bytes``: its download), so reading
``/sys/class/net/<port>/statistics/{rx,tx}_bytes`` every 100 ms gives each
host's throughput in both directions without touching the namespaces.
Counted are Ethernet frames: payload plus TCP/IP/Ethernet headers.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

SYS_NET = Path("/sys/class/net")
INTERVAL_S = 0.1


@dataclasses.dataclass
class Series:
    """Samples of one run: times (s since :attr:`t0`) and, per host,
    cumulative bytes up (sent by the host) and down (received)."""

    t0: float
    times: list[float] = dataclasses.field(default_factory=list)
    up: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    down: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def add(self, t: float, counters: Mapping[str, tuple[int, int]]) -> None:
        self.times.append(t - self.t0)
        for host, (up, down) in counters.items():
            self.up.setdefault(host, []).append(up)
            self.down.setdefault(host, []).append(down)

    def rates_mbit(self, host: str, direction: str
                   ) -> tuple[list[float], list[float]]:
        """(midpoint times, Mbit/s) between consecutive samples."""
        values = (self.up if direction == "up" else self.down).get(host, [])
        times: list[float] = []
        rates: list[float] = []
        for i in range(1, min(len(values), len(self.times))):
            dt = self.times[i] - self.times[i - 1]
            if dt <= 0:
                continue
            times.append((self.times[i] + self.times[i - 1]) / 2)
            rates.append((values[i] - values[i - 1]) * 8 / dt / 1e6)
        return times, rates

    def bytes_between(self, host: str, direction: str, start: float,
                      end: float | None = None) -> int:
        """Bytes moved from ``start`` to ``end`` (s since t0; end: last
        sample), from the nearest samples."""
        values = (self.up if direction == "up" else self.down).get(host, [])
        if not values or not self.times:
            return 0

        def at(t: float) -> int:
            idx = 0
            for i, ts in enumerate(self.times[:len(values)]):
                if ts <= t:
                    idx = i
            return values[idx]

        last = values[min(len(values), len(self.times)) - 1]
        return (last if end is None else at(end)) - at(start)

    def idle_seconds(self, host: str, direction: str, start: float,
                     end: float, rate: float) -> float:
        """Capacity of ``host``'s link left unused from ``start`` to
        ``end`` (s since t0), in seconds at ``rate`` bytes/s.

        Why: where the bottleneck link of an attempt idles, the attempt
        waited on something else (a stall, a start, a switchover wait);
        this adds those waits up the same way for every method.
        """
        values = (self.up if direction == "up" else self.down).get(host, [])
        if rate <= 0:
            return 0.0
        idle = 0.0
        for i in range(1, min(len(values), len(self.times))):
            a, b = self.times[i - 1], self.times[i]
            lo, hi = max(a, start), min(b, end)
            if hi <= lo or b <= a:
                continue
            share = (hi - lo) / (b - a)         # part of the interval
            moved = (values[i] - values[i - 1]) * share
            idle += max(0.0, rate * (hi - lo) - moved) / rate
        return idle

    def to_json(self) -> dict[str, object]:
        """Per host, the starting counters and the deltas of each sample."""
        def deltas(values: list[int]) -> list[int]:
            return [b - a for a, b in zip(values, values[1:])]

        return {
            "interval_s": INTERVAL_S,
            "t": [round(t, 3) for t in self.times],
            "up_bytes": {h: deltas(v) for h, v in self.up.items()},
            "down_bytes": {h: deltas(v) for h, v in self.down.items()},
        }


def read_counters(ports: Mapping[str, str]) -> dict[str, tuple[int, int]]:
    """Host -> (up, down) byte counters of its bridge port."""
    out = {}
    for host, port in ports.items():
        base = SYS_NET / port / "statistics"
        try:
            up = int((base / "rx_bytes").read_text())
            down = int((base / "tx_bytes").read_text())
        except (OSError, ValueError):
            up = down = 0
        out[host] = (up, down)
    return out


class LinkSampler:
    """Samples the ports of ``ports`` (host -> bridge port) in a thread.

    :param reader: replaces :func:`read_counters` (tests).
    """

    def __init__(self, ports: Mapping[str, str],
                 interval_s: float = INTERVAL_S,
                 reader: Callable[[Mapping[str, str]],
                                  dict[str, tuple[int, int]]] | None = None
                 ) -> None:
        self.ports = dict(ports)
        self.interval_s = interval_s
        self.reader = reader or read_counters
        self.series: Series | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> Series:
        """Start a new series (t0 = now); stops a running one."""
        self.stop()
        series = Series(t0=time.monotonic())
        series.add(time.monotonic(), self.reader(self.ports))
        self.series = series
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(series,),
                                        name="link-sampler", daemon=True)
        self._thread.start()
        return series

    def _loop(self, series: Series) -> None:
        next_at = time.monotonic() + self.interval_s
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            with self._lock:
                series.add(time.monotonic(), self.reader(self.ports))
            next_at += self.interval_s

    def latest_rates(self, window_s: float = 0.5
                     ) -> dict[str, tuple[float, float]]:
        """Host -> (up, down) Mbit/s over the last ``window_s``."""
        series = self.series
        if series is None:
            return {}
        with self._lock:
            if len(series.times) < 2:
                return {}
            last = len(series.times) - 1
            first = last
            while first > 0 and \
                    series.times[last] - series.times[first] < window_s:
                first -= 1
            dt = series.times[last] - series.times[first]
            if dt <= 0:
                return {}
            return {h: ((series.up[h][last] - series.up[h][first]) * 8 / dt
                        / 1e6,
                        (series.down[h][last] - series.down[h][first]) * 8
                        / dt / 1e6)
                    for h in series.up}

    def stop(self) -> Series | None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(2)
            self._thread = None
            if self.series is not None:
                with self._lock:
                    self.series.add(time.monotonic(),
                                    self.reader(self.ports))
        return self.series
