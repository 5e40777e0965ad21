"""Concurrent lab runs sharing the broker: real processes, real flocks.

Each "lab run" is a child Python process driving a
:class:`~nova_dcmigrate.lab.rabbit.RabbitBroker` (or a bare
:class:`~nova_dcmigrate.lab.shared_use.SharedUse`) on a lock file in a
temp dir, one command per line on its stdin.  The one fake: the broker's
start and stop are a flag file (the machine's real RabbitMQ is shared by
everyone working here, which is the point; starting and stopping it is
covered by the functional tests' broker fixture).  The locks are real.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
import select
import subprocess
import sys
import time

import pytest

from nova_dcmigrate.lab import exception
from nova_dcmigrate.lab import shared_use

REPO = Path(__file__).resolve().parents[3]

CHILD = r'''
import os, sys, time
from pathlib import Path
from nova_dcmigrate.lab import rabbit, shared_use

lock, flag = Path(sys.argv[1]), Path(sys.argv[2])


class FlagBroker(rabbit.RabbitBroker):
    """The broker process replaced by a flag file."""

    def _running(self):
        return flag.exists()

    def _start(self):
        time.sleep(0.3)             # a slow start: others may look now
        flag.write_text(str(os.getpid()))

    def _stop(self):
        flag.unlink()


broker = FlagBroker(lock)
use = shared_use.SharedUse(lock, timeout=20)
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "ensure":
        broker.ensure_running()
        print("started_here=%s" % broker.started_here, flush=True)
    elif cmd[0] == "acquire":      # what DCMIGRATE_RABBIT_EXTERNAL=1 does
        broker.acquire()
        print("acquired", flush=True)
    elif cmd[0] == "stop":
        broker.stop()
        print("stopped", flush=True)
    elif cmd[0] == "use":
        use.acquire()
        print("using", flush=True)
    elif cmd[0] == "sole":
        print("sole=%s" % use.sole_user(), flush=True)
    elif cmd[0] == "release":
        use.release()
        print("released", flush=True)
'''


class Run:
    """One lab run: a child process holding its own locks."""

    def __init__(self, tmp: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp / "rabbitmq.lock"),
             str(tmp / "broker-running")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=env, cwd=str(REPO))
        assert self.read() == "ready"

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, "child exited: %s" % self.proc.wait(5)
        return line

    def do(self, cmd: str) -> str:
        self.send(cmd)
        return self.read()

    def answered_within(self, seconds: float) -> bool:
        """Whether the child's next line comes in ``seconds``."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], seconds)
        return bool(ready)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


Runs = Callable[[], Run]


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    made: list[Run] = []

    def start() -> Run:
        made.append(Run(tmp_path))
        return made[-1]

    yield start
    for r in made:
        r.close()


@pytest.fixture
def flag(tmp_path: Path) -> Path:
    return tmp_path / "broker-running"


def test_starter_leaves_the_broker_to_a_run_still_using_it(
        runs: Runs, flag: Path) -> None:
    a, b = runs(), runs()
    assert a.do("ensure") == "started_here=True" and flag.exists()
    assert b.do("ensure") == "started_here=False"
    assert a.do("stop") == "stopped"
    assert flag.exists()                # b still uses it
    assert b.do("stop") == "stopped"
    assert flag.exists()                # b did not start it


def test_starter_stops_the_broker_when_nobody_else_uses_it(
        runs: Runs, flag: Path) -> None:
    a, b = runs(), runs()
    assert a.do("ensure") == "started_here=True"
    assert b.do("ensure") == "started_here=False"
    assert b.do("stop") == "stopped"
    assert a.do("stop") == "stopped"
    assert not flag.exists()


def test_a_run_that_died_no_longer_counts(runs: Runs, flag: Path) -> None:
    a, b = runs(), runs()
    assert a.do("ensure") == "started_here=True"
    assert b.do("ensure") == "started_here=False"
    b.proc.kill()
    b.proc.wait(10)
    assert a.do("stop") == "stopped"
    assert not flag.exists()


def test_a_broker_the_lab_did_not_start_is_never_stopped(
        runs: Runs, flag: Path) -> None:
    flag.write_text("system service")
    a = runs()
    assert a.do("ensure") == "started_here=False"
    assert a.do("stop") == "stopped"
    assert flag.read_text() == "system service"


def test_an_external_user_keeps_the_broker_running(
        runs: Runs, flag: Path) -> None:
    """DCMIGRATE_RABBIT_EXTERNAL=1: the caller's broker is only used
    (shared lock), which still keeps a starter from stopping it."""
    a, ext = runs(), runs()
    assert a.do("ensure") == "started_here=True"
    assert ext.do("acquire") == "acquired"
    assert a.do("stop") == "stopped"
    assert flag.exists()
    assert ext.do("stop") == "stopped"
    assert flag.exists()


def test_two_runs_finding_it_down_start_it_once(
        runs: Runs, flag: Path) -> None:
    a, b = runs(), runs()
    a.send("ensure")
    b.send("ensure")
    answers = sorted([a.read(), b.read()])
    assert answers == ["started_here=False", "started_here=True"]
    assert flag.exists()


def test_a_new_user_waits_while_the_last_one_stops_it(runs: Runs) -> None:
    a, b = runs(), runs()
    assert a.do("use") == "using"
    assert a.do("sole") == "sole=True"      # a now holds it exclusively
    b.send("use")
    assert not b.answered_within(0.7)       # blocked: a is stopping it
    assert a.do("release") == "released"
    assert b.read() == "using"
    assert b.do("sole") == "sole=True"


def test_sole_user_is_false_while_another_uses_it(runs: Runs) -> None:
    a, b = runs(), runs()
    assert a.do("use") == "using"
    assert b.do("use") == "using"
    assert a.do("sole") == "sole=False"
    assert b.do("release") == "released"
    # A user that asked gives up its claim (flock(2) conversions are not
    # atomic); it asks again after acquiring.
    assert a.do("release") == "released"
    assert a.do("use") == "using"
    assert a.do("sole") == "sole=True"


def test_acquire_gives_up_with_a_clear_error(
        tmp_path: Path, runs: Runs) -> None:
    a = runs()
    assert a.do("use") == "using"
    assert a.do("sole") == "sole=True"
    use = shared_use.SharedUse(tmp_path / "rabbitmq.lock", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(exception.SharedServiceBusy) as err:
        use.acquire()
    assert time.monotonic() - started < 5
    assert (err.value.path, err.value.holders) == (
        str(tmp_path / "rabbitmq.lock"), str(a.proc.pid))
    assert not use.held
