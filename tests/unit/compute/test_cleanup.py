"""Failed redirect clean-up steps are kept, retried and reported."""

from __future__ import annotations

import logging

import pytest

from nova_dcmigrate.compute import cleanup


class Flaky:
    """Fails ``failures`` times, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("placement said no (%d)" % self.calls)


def _step(fn: Flaky) -> cleanup.CleanupStep:
    return cleanup.CleanupStep("i-1", "m-1", "dest1",
                               "releasing the allocation on dest1", fn)


def test_success_is_not_kept() -> None:
    queue = cleanup.CleanupQueue(retries=3, interval=10)
    assert queue.run(_step(Flaky(0)))
    assert queue.pending() == []


def test_failure_is_logged_at_error_kept_and_retried(
        caplog: pytest.LogCaptureFixture) -> None:
    queue = cleanup.CleanupQueue(retries=3, interval=10)
    fn = Flaky(2)
    with caplog.at_level(logging.INFO):
        assert not queue.run(_step(fn))
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    [step] = queue.pending("i-1")
    assert step.describe() == {
        "host": "dest1", "step": "releasing the allocation on dest1",
        "tries": 1, "error": "RuntimeError: placement said no (1)",
        "state": "pending"}
    # Not due yet: nothing runs.
    assert queue.retry(now=step.next_try - 1) == 1
    assert fn.calls == 1
    with caplog.at_level(logging.INFO):
        assert queue.retry(now=step.next_try) == 1
        assert queue.retry(now=step.next_try + 10) == 0
    assert fn.calls == 3
    assert queue.pending() == []
    assert step.state == "done"
    assert "done after 3 tries" in caplog.text


def test_gives_up_after_the_retries_with_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    queue = cleanup.CleanupQueue(retries=2, interval=0)
    fn = Flaky(100)
    queue.run(_step(fn))
    with caplog.at_level(logging.ERROR):
        while queue.pending():
            queue.retry(now=1e12)
    assert fn.calls == 3
    assert "giving up" in caplog.text
