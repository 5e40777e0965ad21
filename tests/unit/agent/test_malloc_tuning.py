"""The agent's glibc arena limit (see nova_dcmigrate.agent.malloc_tuning).

Run in a child process: the limit is process-wide and stays set.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from nova_dcmigrate.agent import malloc_tuning

CHILD = r"""
import ctypes, ctypes.util, sys, threading
from nova_dcmigrate.agent import malloc_tuning
assert malloc_tuning.limit_arenas(int(sys.argv[1])) is (sys.argv[1] != "0")
# Threads that allocate: with the limit, they share the arenas.
# All alive at once (an exited thread's arena is reused), small blocks
# (large ones are mmapped outside the arenas).
bufs = []
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    bufs.append([bytearray(1024) for _ in range(2000)])
    barrier.wait()
ts = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
f = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, f)
libc.fclose(ctypes.c_void_p(f))
print(open(sys.argv[2]).read().count("<heap nr="))
"""


def _arenas(tmp_path, limit: int) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, str(limit),
                          str(tmp_path / "info.xml")],
                         capture_output=True, text=True, timeout=60,
                         check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc only")
def test_limit_caps_arenas_per_thread(tmp_path):
    limited = _arenas(tmp_path, 2)
    assert limited <= 2
    assert _arenas(tmp_path, 0) > limited     # glibc's default: more


def test_zero_leaves_the_default():
    assert malloc_tuning.limit_arenas(0) is False
