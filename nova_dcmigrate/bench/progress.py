"""What the user sees while migrations run.

On a terminal: a rich progress display, one line per run with its phase,
a bar for the current attempt's first pass and live link rates.  Anywhere
else (CI logs, pipes): plain time-stamped lines, one per phase change and
at most one progress line every few seconds per run.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO

#: Seconds between two progress lines of one run in plain mode.
PLAIN_INTERVAL_S = 5.0


class ProgressView:
    """Interface (and no-op implementation) of the progress display."""

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def start_run(self, key: str, label: str) -> None:
        """A new run (one method, one repeat) begins."""

    def update(self, key: str, *, phase: str | None = None,
               fraction: float | None = None,
               detail: str | None = None) -> None:
        """Phase (a word: booting, migrating, ...), first-pass fraction
        of the current attempt (0..1) and a free-form detail."""

    def finish_run(self, key: str, ok: bool, text: str) -> None:
        """The run ended (ok: completed with identical RAM)."""

    def message(self, text: str) -> None:
        """A line outside any run."""


class PlainProgress(ProgressView):
    """Time-stamped lines on ``stream``."""

    def __init__(self, stream: TextIO | None = None,
                 interval_s: float = PLAIN_INTERVAL_S) -> None:
        self.stream = stream or sys.stdout
        self.interval_s = interval_s
        self.t0 = time.monotonic()
        self.labels: dict[str, str] = {}
        self.phases: dict[str, str] = {}
        self.last_line: dict[str, float] = {}

    def _print(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        self.stream.write("[%6.1fs] %s\n" % (elapsed, text))
        self.stream.flush()

    def start_run(self, key: str, label: str) -> None:
        self.labels[key] = label
        self.phases[key] = ""
        self.last_line[key] = 0.0
        self._print("%s: start" % label)

    def update(self, key: str, *, phase: str | None = None,
               fraction: float | None = None,
               detail: str | None = None) -> None:
        now = time.monotonic()
        changed = phase is not None and phase != self.phases.get(key)
        if phase is not None:
            self.phases[key] = phase
        if not changed and now - self.last_line.get(key, 0.0) < \
                self.interval_s:
            return
        self.last_line[key] = now
        parts = [self.phases.get(key, "")]
        if fraction is not None:
            parts.append("%3.0f%% of a first pass" % (100 * fraction))
        if detail:
            parts.append(detail)
        self._print("%s: %s" % (self.labels.get(key, key),
                                ", ".join(p for p in parts if p)))

    def finish_run(self, key: str, ok: bool, text: str) -> None:
        self._print("%s: %s %s" % (self.labels.get(key, key),
                                   "done," if ok else "FAILED:", text))

    def message(self, text: str) -> None:
        self._print(text)


class RichProgress(ProgressView):
    """rich's live progress display (terminal only)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn
        from rich.progress import Progress
        from rich.progress import TaskProgressColumn
        from rich.progress import TextColumn
        from rich.progress import TimeElapsedColumn

        self.console = console or Console()
        self.progress = Progress(
            TextColumn("{task.description:<22}"),
            TextColumn("[bold]{task.fields[phase]:<11}"),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console, transient=False, refresh_per_second=8)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()

    def start_run(self, key: str, label: str) -> None:
        self.tasks[key] = self.progress.add_task(
            label, total=1.0, phase="starting", detail="")

    def update(self, key: str, *, phase: str | None = None,
               fraction: float | None = None,
               detail: str | None = None) -> None:
        task = self.tasks.get(key)
        if task is None:
            return
        fields: dict[str, Any] = {}
        if phase is not None:
            fields["phase"] = phase
        if detail is not None:
            fields["detail"] = detail
        if fraction is not None:
            fields["completed"] = max(0.0, min(1.0, fraction))
        self.progress.update(task, **fields)

    def finish_run(self, key: str, ok: bool, text: str) -> None:
        task = self.tasks.get(key)
        if task is None:
            return
        self.progress.update(
            task, completed=1.0, phase="[green]done" if ok else "[red]FAILED",
            detail=text)
        self.progress.stop_task(task)

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)


def make_progress(stream: TextIO | None = None) -> ProgressView:
    """Rich display on a terminal, plain lines otherwise."""
    stream = stream or sys.stdout
    if stream.isatty():
        return RichProgress()
    return PlainProgress(stream)
