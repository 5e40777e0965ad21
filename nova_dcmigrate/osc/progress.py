"""``--wait``: follow a redirect record until it ends, showing its progress.

On a terminal a rich progress bar shows the bytes moved (from the source
plus relayed by the holders) against the total, and the API's estimated
completion; without a terminal (logs, CI, pipes) one plain line is printed
each time the record changes.  Progress goes to stderr so that ``-f json``
on stdout stays machine-readable.

rich is not a requirement of nova-dcmigrate on compute hosts (it is in the
``lab`` extra); inside OSC it is always there (cliff 4 -> cmd2 -> rich), and
without it ``--wait`` falls back to plain lines.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any
from typing import Protocol
from typing import TextIO

try:
    from rich import console as rich_console
    from rich import progress as rich_progress
except ImportError:  # pragma: no cover - OSC always brings rich
    rich_console = None  # type: ignore[assignment]
    rich_progress = None  # type: ignore[assignment]

#: Seconds between two polls of the record.
POLL_INTERVAL = 1.0
#: States after which the record does not change any more.
TERMINAL_STATES = frozenset(('completed', 'failed', 'rolled-back'))
#: Terminal states that make ``--wait`` exit non-zero.
FAILED_STATES = frozenset(('failed', 'rolled-back'))

MIB = 1024 * 1024


class Figures:
    """What the progress display needs from one record."""

    def __init__(self, record: dict[str, Any]) -> None:
        prog = record.get('progress') or {}
        relayed = prog.get('bytes_relayed') or {}
        self.state: str = record.get('state', '?')
        self.new_destination: str | None = record.get('new_destination')
        self.from_source = int(prog.get('bytes_from_source') or 0)
        self.relayed: dict[str, int] = {
            str(h): int(b or 0) for h, b in relayed.items()}
        self.deduplicated = int(prog.get('pages_deduplicated') or 0)
        rem = prog.get('remaining_bytes')
        self.remaining: int | None = None if rem is None else int(rem)
        self.estimate: str | None = prog.get('estimated_completion')
        self.has_progress = bool(record.get('progress'))

    @property
    def moved(self) -> int:
        return self.from_source + sum(self.relayed.values())

    @property
    def total(self) -> int | None:
        if self.remaining is None:
            return None
        return self.moved + self.remaining

    def eta_text(self, now: datetime.datetime | None = None) -> str:
        """``12:30:05Z (in 42 s)`` from the API's ISO 8601 estimate."""
        if not self.estimate:
            return 'estimate: -'
        try:
            when = datetime.datetime.fromisoformat(
                self.estimate.replace('Z', '+00:00'))
        except ValueError:
            return 'estimate: %s' % self.estimate
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        now = now or datetime.datetime.now(datetime.timezone.utc)
        left = max(0, int((when - now).total_seconds()))
        return 'estimate: %sZ (in %d s)' % (
            when.astimezone(datetime.timezone.utc).strftime('%H:%M:%S'),
            left)


def _mib(n: int) -> str:
    return '%.1f MiB' % (n / MIB)


def describe(record: dict[str, Any]) -> str:
    """One plain line for a record (no terminal, or the hook's summary)."""
    f = Figures(record)
    parts = ['redirect %s: %s' % (record.get('id'), f.state),
             'new destination %s' % (f.new_destination or '(re-pick)')]
    if f.has_progress:
        relayed = ', '.join('%s %s' % (h, _mib(b))
                            for h, b in sorted(f.relayed.items()))
        parts.append('from source %s' % _mib(f.from_source))
        parts.append('relayed %s' % (relayed or '0'))
        parts.append('deduplicated %d pages' % f.deduplicated)
        parts.append('remaining %s' % (
            '-' if f.remaining is None else _mib(f.remaining)))
        if f.state not in TERMINAL_STATES:
            parts.append(f.eta_text())
    error = record.get('error')
    if error:
        parts.append('error %s: %s' % (error.get('code'),
                                       error.get('message')))
    return ', '.join(parts)


class View(Protocol):
    def update(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class PlainView:
    """A line per change of the record (the timestamps stay out)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._last: str | None = None

    def update(self, record: dict[str, Any]) -> None:
        line = describe(record)
        key = line.split(', estimate:')[0]
        if key != self._last:
            self._stream.write(line + '\n')
            self._stream.flush()
            self._last = key

    def close(self) -> None:
        pass


class BarView:
    """A rich progress bar: bytes moved of the total, and the estimate."""

    def __init__(self, stream: TextIO,
                 console: Any = None) -> None:
        self._console = console or rich_console.Console(file=stream)
        self._bar = rich_progress.Progress(
            rich_progress.TextColumn('{task.description}'),
            rich_progress.BarColumn(),
            rich_progress.DownloadColumn(binary_units=True),
            rich_progress.TextColumn('{task.fields[eta]}'),
            console=self._console)
        self._task: rich_progress.TaskID | None = None

    def update(self, record: dict[str, Any]) -> None:
        f = Figures(record)
        text = 'redirect %s -> %s' % (
            f.state, f.new_destination or '(re-pick)')
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task(text, total=f.total, eta='')
        eta = '' if f.state in TERMINAL_STATES else f.eta_text()
        self._bar.update(self._task, description=text, total=f.total,
                         completed=f.moved, eta=eta)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.stop()


def make_view(stream: TextIO) -> View:
    isatty = getattr(stream, 'isatty', None)
    if rich_progress is not None and isatty is not None and isatty():
        return BarView(stream)
    return PlainView(stream)


def wait(fetch: Callable[[], dict[str, Any]], view: View, *,
         interval: float = POLL_INTERVAL,
         sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll ``fetch`` until the record reaches a terminal state."""
    try:
        while True:
            record = fetch()
            view.update(record)
            if record.get('state') in TERMINAL_STATES:
                return record
            sleep(interval)
    finally:
        view.close()
