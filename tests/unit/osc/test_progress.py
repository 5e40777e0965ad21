"""--wait: figures from a record, plain lines, the rich bar, the poll loop."""

from __future__ import annotations

import datetime
import io

from rich import console as rich_console

from nova_dcmigrate.osc import progress

MIB = 1024 * 1024


def rec(state='running', **prog):
    p = {'bytes_from_source': 10 * MIB, 'bytes_relayed': {'h2': 30 * MIB},
         'pages_deduplicated': 7, 'remaining_bytes': 60 * MIB,
         'estimated_completion': '2026-12-03T12:00:30+00:00'}
    p.update(prog)
    return {'id': 'r1', 'state': state, 'new_destination': 'h3',
            'progress': p, 'error': None}


def test_figures_sum_source_and_relayed():
    f = progress.Figures(rec(bytes_relayed={'h2': 30 * MIB, 'h4': MIB}))
    assert f.moved == 41 * MIB
    assert f.total == 101 * MIB


def test_figures_unknown_remaining_has_no_total():
    assert progress.Figures(rec(remaining_bytes=None)).total is None


def test_figures_before_running_are_zero():
    f = progress.Figures({'id': 'r', 'state': 'requested',
                          'progress': None})
    assert (f.moved, f.total, f.has_progress) == (0, None, False)


def test_eta_text():
    f = progress.Figures(rec())
    now = datetime.datetime(2026, 12, 3, 12, 0, 0,
                            tzinfo=datetime.timezone.utc)
    assert f.eta_text(now) == 'estimate: 12:00:30Z (in 30 s)'
    assert progress.Figures(
        rec(estimated_completion=None)).eta_text(now) == 'estimate: -'
    assert progress.Figures(
        rec(estimated_completion='soon')).eta_text(now) == 'estimate: soon'


def test_describe_mentions_every_figure_and_the_error():
    r = rec(state='failed')
    r['error'] = {'code': 'RedirectPrepareFailed', 'message': 'no agent'}
    line = progress.describe(r)
    assert 'estimate' not in line   # nothing left to estimate
    for part in ('redirect r1: failed', 'new destination h3',
                 'from source 10.0 MiB', 'relayed h2 30.0 MiB',
                 'deduplicated 7 pages', 'remaining 60.0 MiB',
                 'error RedirectPrepareFailed: no agent'):
        assert part in line


def test_describe_re_pick_pending():
    line = progress.describe({'id': 'r', 'state': 'requested',
                              'new_destination': None, 'progress': None})
    assert line == 'redirect r: requested, new destination (re-pick)'


def test_plain_view_prints_a_line_per_change_only():
    out = io.StringIO()
    view = progress.PlainView(out)
    view.update(rec())
    view.update(rec(estimated_completion='2026-12-03T12:00:31+00:00'))
    view.update(rec(bytes_from_source=20 * MIB))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert 'from source 20.0 MiB' in lines[1]


def test_bar_view_shows_bytes_and_estimate_on_a_terminal():
    out = io.StringIO()
    con = rich_console.Console(file=out, force_terminal=True, width=120)
    view = progress.BarView(out, console=con)
    view.update(rec())
    view.close()
    text = out.getvalue()
    assert 'redirect running -> h3' in text
    assert '40.0/100.0 MiB' in text
    assert 'estimate: 12:00:30Z' in text


def test_make_view_follows_isatty():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    assert isinstance(progress.make_view(io.StringIO()), progress.PlainView)
    assert isinstance(progress.make_view(Tty()), progress.BarView)


def test_wait_polls_until_a_terminal_state():
    states = iter(['preparing', 'running', 'running', 'rolled-back',
                   'never'])
    sleeps = []
    out = io.StringIO()
    final = progress.wait(lambda: rec(state=next(states)),
                          progress.PlainView(out), interval=0.5,
                          sleep=sleeps.append)
    assert final['state'] == 'rolled-back'
    assert sleeps == [0.5, 0.5, 0.5]
    assert 'rolled-back' in out.getvalue().splitlines()[-1]


def test_wait_closes_the_view_on_error():
    closed = []

    class View(progress.PlainView):
        def close(self):
            closed.append(True)

    def fetch():
        raise RuntimeError('api gone')
    try:
        progress.wait(fetch, View(io.StringIO()))
    except RuntimeError:
        pass
    assert closed == [True]
