#!/usr/bin/env python3
"""Benchmark of the dcmigrate agent data path, in one run.

Two parts (issue text): "agent throughput on a recorded stream (MB/s,
pages/s, parse-only and parse+digest+forward) and the ratio of migration
time through agents vs direct QEMU->QEMU on the same 300 Mbit/s link.
Targets: the agent path sustains >= 400 MB/s of stream per core on this
machine (aim for 1.25 GB/s: 10 GbE), and through-agent migration time is
<= 1.10x direct, with downtime within 100 ms of direct."

1. Throughput.  A real precopy stream is recorded with QEMU
   (``tools/record_stream.py``: SeaBIOS guest whose RAM holds a
   ``-device loader`` payload of distinct random pages), or read from
   ``--stream``.  In-process micro benchmarks parse it (no-op visitor),
   parse + digest it (the source agent's visitor), parse + store it (the
   destination agent's page store, new and already-touched) and MAC it
   (the frame HMAC).  Then the
   stream goes through two real :class:`AgentManager` instances, each in
   its own process (no RPC: methods are called over a pipe), from a feeder
   process that plays the source QEMU (sends the stream, reads the return
   path) to a sink process that plays the destination QEMU (reads to EOF,
   answers ``SHUT``).  Reported: wall MB/s and pages/s of the whole
   pipeline, and for each agent MB of stream per CPU-second of that agent
   process (source: parse + digest + frame + MAC + send; destination:
   MAC check + parse + store + forward).  The per-core figure is the
   CPU-time one: with 2 cores and 4 busy processes the wall figure is
   CPU-bound.

2. Lab.  Two lab hosts on ``--link`` (300mbit) links, one guest
   ping-ponged between them, alternating direct QEMU->QEMU migrations and
   migrations through lab agents (real daemons, RabbitMQ RPC).  Every
   migration's RAM is compared (must be identical).  Reported: QEMU's
   total time, downtime, bytes, wall time; median ratio agents/direct and
   median downtime difference, PASS/FAIL against the targets.  The lab
   agents run with their default options unless ``--agent-conf`` is given
   (the downtime overhead grows with their ``socket_buffer``).

Run as root (network namespaces)::

    .venv/bin/python tools/bench_agent.py [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import logging
import multiprocessing as mp
import os
from pathlib import Path
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from typing import Any, Callable, cast

import xxhash

# oslo.messaging pulls in oslo.service's eventlet backend, which warns.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from nova_dcmigrate.agent import destination  # noqa: E402
from nova_dcmigrate.agent import protocol  # noqa: E402
from nova_dcmigrate.agent import session as sess  # noqa: E402
from nova_dcmigrate.agent import source  # noqa: E402
from nova_dcmigrate.agent.page_store import PageStore  # noqa: E402
from nova_dcmigrate.stream import StreamReader  # noqa: E402
from nova_dcmigrate.stream import StreamVisitor  # noqa: E402
from nova_dcmigrate.stream import fastpath  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "tools"))
import bench_paths  # noqa: E402

MB = 1e6
MIB = 1 << 20

TARGET_PER_CORE_MBS = 400.0
AIM_PER_CORE_MBS = 1250.0
TARGET_TIME_RATIO = 1.10
TARGET_DOWNTIME_MS = 100.0

#: Default recording: 256 MiB of distinct random pages in a 320 MiB guest.
RECORD_MEM_MIB = 320
RECORD_PAYLOAD = 256 * MIB

LOG = logging.getLogger("bench_agent")


class BenchError(Exception):
    pass


def out(line: str = "") -> None:
    print(line, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: list[str], rows: list[list[Any]], indent: str = "  "
          ) -> str:
    """Plain aligned text table; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in r]
                                           for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None
                   for r in rows) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        parts = [c.rjust(w) if numeric[i] else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths))]
        lines.append(indent + "  ".join(parts).rstrip())
        if n == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return "%.3f" % v if abs(v) < 10 else "%.1f" % v
    return str(v)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------------------
# Child process bookkeeping: every process we fork or spawn is ended by id.
# ---------------------------------------------------------------------------

_CHILDREN: list[mp.process.BaseProcess] = []
_CTX = mp.get_context("fork")


def _start_child(target: Callable[..., None], *args: Any,
                 name: str) -> tuple[mp.process.BaseProcess, Any]:
    parent, child = _CTX.Pipe()
    proc = _CTX.Process(target=_child_main, args=(target, child, *args),
                        name=name, daemon=True)
    proc.start()
    child.close()
    _CHILDREN.append(proc)
    return proc, parent


def _child_main(target: Callable[..., None], conn: Any, *args: Any) -> None:
    # The parent handles Ctrl-C and ends us; SIGTERM must just exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        target(conn, *args)
    except BaseException as err:  # reported to the parent
        with contextlib.suppress(Exception):
            conn.send(("error", "%s: %s" % (type(err).__name__, err)))
        raise


def _end_children() -> None:
    for proc in _CHILDREN:
        if proc.is_alive():
            proc.terminate()
    for proc in _CHILDREN:
        proc.join(3)
        if proc.is_alive():
            proc.kill()
            proc.join(3)
    _CHILDREN.clear()


def _reply(conn: Any, timeout: float, what: str) -> Any:
    if not conn.poll(timeout):
        raise BenchError("%s: no answer within %.0f s" % (what, timeout))
    try:
        msg = conn.recv()
    except EOFError:
        raise BenchError("%s: child process died" % what) from None
    if msg[0] == "error":
        raise BenchError("%s: %s" % (what, msg[1]))
    return msg[1]


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _cpu_split() -> tuple[float, float, int]:
    """(user, system) CPU seconds of this process (all threads), and its
    minor page faults (first touches of new memory)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime, ru.ru_minflt


# ---------------------------------------------------------------------------
# The recorded stream
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Stream:
    data: bytes
    source: str
    meta: dict[str, Any]
    record_s: float | None = None


def record_stream(workdir: str, mem_mib: int, payload: int,
                  timeout: float = 180.0) -> Stream:
    """Record a stream with tools/record_stream.py in its own session, so
    that an interruption can end it and its QEMUs as one process group."""
    base = os.path.join(workdir, "rec")
    argv = [sys.executable, os.path.join(ROOT, "tools", "record_stream.py"),
            "--mem", str(mem_mib), "--payload-size", str(payload),
            "--unit", "4096", "--settle", "0.5", "--timeout", "120",
            "--no-gzip", base]
    env = dict(os.environ, TMPDIR=workdir)   # its scratch dir lands in ours
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode != 0:
        raise BenchError("record_stream.py failed (%d): %s"
                         % (proc.returncode, stderr.decode()[-2000:]))
    meta = json.loads(stdout)
    with open(base + ".bin", "rb") as f:
        data = f.read()
    os.unlink(base + ".bin")
    if meta.get("source_status") != "completed":
        raise BenchError("recording migration did not complete: %s"
                         % meta.get("source_status"))
    return Stream(data, "recorded now (%d MiB guest, %d MiB payload)"
                  % (mem_mib, payload >> 20), meta,
                  time.monotonic() - started)


def load_stream(path: str) -> Stream:
    with open(path, "rb") as f:
        head = f.read(2)
    opener: Callable[..., Any] = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        data = f.read()
    meta: dict[str, Any] = {}
    stem = path[:-3] if path.endswith(".gz") else os.path.splitext(path)[0]
    with contextlib.suppress(OSError, ValueError):
        with open(stem + ".json") as f:
            meta = json.load(f)
    return Stream(data, path, meta)


# ---------------------------------------------------------------------------
# In-process micro benchmarks
# ---------------------------------------------------------------------------

class _Seed:
    secret = secrets.token_hex(32).encode()
    seed = sess.digest_seed(secret)


def _feed(data: bytes, visitor: StreamVisitor, chunk: int) -> StreamReader:
    """Feed ``data`` as the agents do: copy into get_buffer, then parse."""
    reader = StreamReader(visitor)
    src = memoryview(data)
    pos, total = 0, len(data)
    get_buffer, updated = reader.get_buffer, reader.buffer_updated
    while pos < total:
        n = min(chunk, total - pos)
        view = get_buffer(n)
        view[:n] = src[pos:pos + n]
        updated(n)
        pos += n
    reader.close()
    return reader


def _mac_only(data: bytes, chunk: int) -> int:
    key = os.urandom(32)
    header = bytes(protocol.FRAME_HEADER_LEN)
    src = memoryview(data)
    frames = 0
    for pos in range(0, len(data), chunk):
        protocol._mac(key, protocol._SEQ.pack(frames), header,
                      src[pos:pos + chunk])[:protocol.MAC_LEN]
        frames += 1
    return frames


def micro_benchmarks(stream: Stream, chunk: int, repeat: int
                     ) -> dict[str, dict[str, Any]]:
    data = stream.data
    cases: list[tuple[str, str, Callable[[], Any]]] = [
        ("parse-only", "StreamReader, no-op visitor",
         lambda: _feed(data, StreamVisitor(), chunk)),
        ("parse+digest", "source visitor: xxh3_128 per page",
         lambda: _feed(data, source.SourceTracker(cast(Any, None), _Seed.seed),
                       chunk)),
        ("parse+store", "destination visitor: new PageStore.put_page",
         lambda: _store_run(data, chunk)),
        ("parse+store warm", "same, store memory already touched",
         lambda: _feed(data, destination.StoreVisitor(warm), chunk)),
        ("frame MAC", "HMAC-SHA256 of %d KiB frames" % (chunk >> 10),
         lambda: _mac_only(data, chunk)),
    ]
    # A second attempt of a migration reuses its store: no page faults.
    warm = PageStore(_Seed.seed)
    _feed(data, destination.StoreVisitor(warm), chunk)
    try:
        return _run_cases(data, cases, repeat)
    finally:
        warm.close()


def _run_cases(data: bytes, cases: list[tuple[str, str, Callable[[], Any]]],
               repeat: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for key, what, fn in cases:
        walls, cpus = [], []
        pages = None
        for _ in range(repeat):
            c0, t0 = time.process_time(), time.perf_counter()
            r = fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            if isinstance(r, StreamReader):
                pages = r.pages + r.zero_pages
        wall = median(walls)
        results[key] = {"what": what, "wall_s": wall, "cpu_s": median(cpus),
                        "mb_s": len(data) / wall / MB,
                        "mb_per_cpu_s": len(data) / max(median(cpus), 1e-9)
                        / MB,
                        "pages_s": pages / wall if pages else None}
    return results


def _store_run(data: bytes, chunk: int) -> StreamReader:
    store = PageStore(_Seed.seed)
    try:
        return _feed(data, destination.StoreVisitor(store), chunk)
    finally:
        store.close()


# ---------------------------------------------------------------------------
# Agent pair: two AgentManagers in two processes, fake QEMUs in two more
# ---------------------------------------------------------------------------

def make_conf(**overrides: Any) -> Any:
    from oslo_config import cfg

    from nova_dcmigrate.conf import agent as agent_conf
    conf = cfg.ConfigOpts()
    agent_conf.register_opts(conf)
    conf([], project="nova-dcmigrate-bench", default_config_files=[])
    conf.set_override("peer_listen_address", "127.0.0.1", "dcmigrate_agent")
    conf.set_override("peer_port", 0, "dcmigrate_agent")
    # Both agents on one filesystem: one socket_dir each; QEMU stand-ins
    # run as root.
    conf.set_override("socket_dir", tempfile.mkdtemp(prefix="dcm-b-"),
                      "dcmigrate_agent")
    os.chmod(conf.dcmigrate_agent.socket_dir, 0o755)
    conf.set_override("qemu_user", "root", "dcmigrate_agent")
    conf.set_override("qemu_group", "root", "dcmigrate_agent")
    conf.set_override("connect_timeout", 10.0, "dcmigrate_agent")
    conf.set_override("session_timeout", 60.0, "dcmigrate_agent")
    for k, v in overrides.items():
        conf.set_override(k, v, "dcmigrate_agent")
    return conf.dcmigrate_agent


def _agent_proc(conn: Any, host: str, overrides: dict[str, Any],
                native: bool) -> None:
    """An agent host: AgentManager driven over the pipe, no RPC."""
    from nova_dcmigrate.agent.manager import AgentManager
    fastpath.set_native(native)
    mgr = AgentManager(make_conf(**overrides), host)
    mgr.start()
    conn.send(("ok", mgr.listener.port))
    while True:
        cmd, *args = conn.recv()
        try:
            if cmd == "cpu":
                result: Any = _cpu_split()
            elif cmd == "call":
                method, *margs = args
                result = getattr(mgr, method)(None, *margs)
            elif cmd == "wait":
                mid, timeout = args
                s = mgr.sessions[(mid, 0)]
                s.done.wait(timeout)
                result = {"cpu": _cpu_split(), "state": s.state.value,
                          "error": s.error, "counters": dict(s.counters),
                          "elapsed": ((s.finished_at or time.monotonic())
                                      - (s.started_at or time.monotonic()))}
            elif cmd == "stop":
                mgr.stop()
                shutil.rmtree(mgr.conf.socket_dir, ignore_errors=True)
                conn.send(("ok", None))
                return
            else:
                raise ValueError("unknown command %r" % cmd)
        except Exception as err:  # noqa: BLE001 - reported to the parent
            conn.send(("error", "%s: %s" % (type(err).__name__, err)))
            continue
        conn.send(("ok", result))


def _feeder_proc(conn: Any, data: bytes, path: str, chunk: int) -> None:
    """Plays the source QEMU: sends the stream, reads the return path."""
    c0 = _cpu_seconds()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    sock.settimeout(None)
    t_connect = time.monotonic()
    returned = bytearray()

    def read_return() -> None:
        with contextlib.suppress(OSError):
            while True:
                d = sock.recv(65536)
                if not d:
                    return
                returned.extend(d)

    rt = threading.Thread(target=read_return, daemon=True)
    rt.start()
    view = memoryview(data)
    for pos in range(0, len(data), chunk):
        sock.sendall(view[pos:pos + chunk])
    t_sent = time.monotonic()
    sock.shutdown(socket.SHUT_WR)
    rt.join(120)
    t_ret_eof = time.monotonic()
    sock.close()
    conn.send(("ok", {"t_connect": t_connect, "t_sent": t_sent,
                      "t_return_eof": t_ret_eof, "returned": bytes(returned),
                      "cpu": _cpu_seconds() - c0}))


def _sink_proc(conn: Any) -> None:
    """Plays the destination QEMU: listens on the UNIX socket path it is
    sent, reads to EOF, replies SHUT."""
    path = conn.recv()
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)
    conn.send(("ok", path))
    lsock.settimeout(60)
    c, _ = lsock.accept()
    lsock.close()
    c0 = _cpu_seconds()
    t_accept = time.monotonic()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    h = xxhash.xxh3_64()
    total = 0
    t_first = None
    while True:
        n = c.recv_into(buf)
        if not n:
            break
        if t_first is None:
            t_first = time.monotonic()
        h.update(view[:n])
        total += n
    t_eof = time.monotonic()
    c.sendall(b"SHUT")
    c.close()
    conn.send(("ok", {"t_accept": t_accept, "t_first": t_first,
                      "t_eof": t_eof, "bytes": total,
                      "digest": h.hexdigest(), "cpu": _cpu_seconds() - c0}))


def agent_pair_benchmark(stream: Stream, repeat: int, chunk: int,
                         socket_buffer: int, feed_chunk: int,
                         tls: dict[str, Any] | None = None,
                         native: bool = True) -> dict[str, Any]:
    """:param tls: ``peer_tls*`` options: the pair talks TLS 1.3.

    :param native: run the agents on the native per-page code.
    """
    data = stream.data
    digest = xxhash.xxh3_64_hexdigest(data)
    overrides = {"chunk_size": chunk, "socket_buffer": socket_buffer,
                 **(tls or {})}
    src_proc, src = _start_child(_agent_proc, "bench-src", overrides,
                                 native, name="bench-src-agent")
    dst_proc, dst = _start_child(_agent_proc, "bench-dst", overrides,
                                 native, name="bench-dst-agent")
    runs: list[dict[str, Any]] = []
    stopped = False
    try:
        _reply(src, 30, "source agent start")
        dst_peer_port = _reply(dst, 30, "destination agent start")
        for i in range(repeat):
            runs.append(_one_pair_run(src, dst, dst_peer_port, data, digest,
                                      feed_chunk, bool(tls)))
            r = runs[-1]
            out("    run %d: %.2f s wall, %.0f MB/s; source agent %.2f CPU-s "
                "(%.2f user + %.2f sys), destination agent %.2f CPU-s "
                "(%.2f user + %.2f sys)" % (
                    i + 1, r["wall_s"], r["wall_mb_s"], r["src_cpu_s"],
                    r["src_user_s"], r["src_sys_s"], r["dst_cpu_s"],
                    r["dst_user_s"], r["dst_sys_s"]))
        for conn in (src, dst):
            conn.send(("stop",))
            _reply(conn, 10, "agent stop")
        stopped = True
    finally:
        for proc in (src_proc, dst_proc):
            proc.join(5 if stopped else 0.1)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    keys = ["wall_s", "wall_mb_s", "pages_s", "src_cpu_s", "dst_cpu_s",
            "src_user_s", "src_sys_s", "dst_user_s", "dst_sys_s",
            "src_mb_per_cpu_s", "dst_mb_per_cpu_s", "src_pages_per_cpu_s",
            "dst_pages_per_cpu_s", "feeder_cpu_s", "sink_cpu_s"]
    return {"runs": runs,
            "median": {k: median([r[k] for r in runs]) for k in keys},
            "chunk_size": chunk, "socket_buffer": socket_buffer,
            "peer_tls": bool(tls)}


def _one_pair_run(src: Any, dst: Any, dst_peer_port: int, data: bytes,
                  digest: str, feed_chunk: int, tls: bool = False
                  ) -> dict[str, Any]:
    mid = str(uuid.uuid4())
    secret = secrets.token_hex(32)
    sink_proc, sink = _start_child(_sink_proc, name="bench-sink")
    feeder_proc = feeder = None
    try:
        src.send(("cpu",))
        src_cpu0 = _reply(src, 10, "source cpu")
        dst.send(("cpu",))
        dst_cpu0 = _reply(dst, 10, "destination cpu")
        dst.send(("call", "prepare_destination", mid, secret, None, 0, None,
                  True, None, tls))
        sink.send(_reply(dst, 10, "prepare_destination")["socket"])
        _reply(sink, 10, "sink start")
        src.send(("call", "prepare_source", mid, secret, "127.0.0.1",
                  dst_peer_port, 0, None, tls))
        listen = _reply(src, 10, "prepare_source")["socket"]
        feeder_proc, feeder = _start_child(_feeder_proc, data, listen,
                                           feed_chunk, name="bench-feeder")
        sink_res = _reply(sink, 300, "sink")
        feed_res = _reply(feeder, 60, "feeder")
        src.send(("wait", mid, 30.0))
        src_res = _reply(src, 40, "source session")
        dst.send(("wait", mid, 30.0))
        dst_res = _reply(dst, 40, "destination session")
        for conn in (src, dst):
            conn.send(("call", "cleanup", mid))
            _reply(conn, 10, "cleanup")
    finally:
        for proc in (sink_proc, feeder_proc):
            if proc is not None:
                proc.join(5)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5)
    for name, res in (("source", src_res), ("destination", dst_res)):
        if res["state"] != "completed":
            raise BenchError("%s session %s: %s" % (name, res["state"],
                                                    res["error"]))
    if sink_res["bytes"] != len(data) or sink_res["digest"] != digest:
        raise BenchError("destination QEMU stand-in got %d bytes (digest "
                         "%s), expected %d (%s)" % (
                             sink_res["bytes"], sink_res["digest"],
                             len(data), digest))
    if feed_res["returned"] != b"SHUT":
        raise BenchError("return path carried %r, expected b'SHUT'"
                         % feed_res["returned"][:64])
    counters = src_res["counters"]
    pages = counters["pages"] + counters["zero_pages"]
    wall = sink_res["t_eof"] - feed_res["t_connect"]
    src_usr = src_res["cpu"][0] - src_cpu0[0]
    src_sys = src_res["cpu"][1] - src_cpu0[1]
    dst_usr = dst_res["cpu"][0] - dst_cpu0[0]
    dst_sys = dst_res["cpu"][1] - dst_cpu0[1]
    src_cpu, dst_cpu = src_usr + src_sys, dst_usr + dst_sys
    n = len(data)
    return {
        "wall_s": wall, "wall_mb_s": n / wall / MB, "pages_s": pages / wall,
        "pages": pages, "stream_bytes": n,
        "src_cpu_s": src_cpu, "dst_cpu_s": dst_cpu,
        "src_user_s": src_usr, "src_sys_s": src_sys,
        "dst_user_s": dst_usr, "dst_sys_s": dst_sys,
        "src_minor_faults": src_res["cpu"][2] - src_cpu0[2],
        "dst_minor_faults": dst_res["cpu"][2] - dst_cpu0[2],
        "src_mb_per_cpu_s": n / src_cpu / MB,
        "dst_mb_per_cpu_s": n / dst_cpu / MB,
        "src_pages_per_cpu_s": pages / src_cpu,
        "dst_pages_per_cpu_s": pages / dst_cpu,
        "feeder_cpu_s": feed_res["cpu"], "sink_cpu_s": sink_res["cpu"],
        "completion_s": feed_res["t_return_eof"] - feed_res["t_connect"],
    }


def throughput_part(args: argparse.Namespace, workdir: str
                    ) -> dict[str, Any]:
    out("== 1. Agent throughput on a recorded stream ==")
    if args.stream:
        stream = load_stream(args.stream)
    else:
        out("  recording a QEMU stream (%d MiB guest, %d MiB random "
            "payload) ..." % (args.record_mem, args.record_payload >> 20))
        stream = record_stream(workdir, args.record_mem, args.record_payload)
    probe = _feed(stream.data, StreamVisitor(), args.chunk_size)
    out("  stream: %s" % stream.source)
    out("  %.1f MB, %d page records (%d PAGE, %d ZERO), %d sections%s" % (
        len(stream.data) / MB, probe.pages + probe.zero_pages, probe.pages,
        probe.zero_pages, probe.sections,
        ", recorded in %.1f s" % stream.record_s if stream.record_s else ""))
    result: dict[str, Any] = {
        "stream": {"source": stream.source, "bytes": len(stream.data),
                   "pages": probe.pages, "zero_pages": probe.zero_pages,
                   "sections": probe.sections, "record_s": stream.record_s,
                   "qemu": stream.meta.get("qemu")},
    }
    tls = None
    if args.peer_tls:
        from nova_dcmigrate.lab.certs import LabCA
        cert = LabCA(Path(workdir) / "pki").issue("bench", ["127.0.0.1"])
        tls = {"peer_tls": True, "peer_tls_ca_file": str(cert.ca_file),
               "peer_tls_cert_file": str(cert.cert_file),
               "peer_tls_key_file": str(cert.key_file)}
        out("  agent pair with mutual TLS 1.3 (peer_tls)")
    result["micro"] = {}
    result["pair_by_path"] = {}
    for name in bench_paths.paths():
        out("  [%s per-page code] in-process micro benchmarks (single "
            "thread, %d KiB chunks, median of %d):"
            % (name, args.chunk_size >> 10, args.repeat))
        # The pure-Python path is the reference: one run of each is
        # enough (keeps make bench short).
        reps = args.repeat if name == "native" else 1
        with bench_paths.path(name):
            micro = micro_benchmarks(stream, args.chunk_size, reps)
        result["micro"][name] = micro
        out(table(["case", "what", "MB/CPU-s", "wall MB/s", "CPU s"], [
            [k, v["what"], round(v["mb_per_cpu_s"]), round(v["mb_s"]),
             v["cpu_s"]]
            for k, v in micro.items()], indent="    "))
        out("  [%s per-page code] agent pair: source and destination "
            "AgentManager in separate processes, fake QEMUs in two more "
            "(chunk_size %d KiB, socket_buffer %s):"
            % (name, args.chunk_size >> 10,
               args.socket_buffer or "kernel default"))
        pair = agent_pair_benchmark(stream, reps, args.chunk_size,
                                    args.socket_buffer, args.feed_chunk,
                                    tls, native=name == "native")
        result["pair_by_path"][name] = pair
        m = pair["median"]
        out(table(["measure (median of %d)" % reps, "MB/s",
                   "pages/s", "CPU-s"], [
            ["pipeline wall (4 procs on %d cores)" % (os.cpu_count() or 0),
             round(m["wall_mb_s"]), round(m["pages_s"]), None],
            ["source agent per core (parse+digest+frame+MAC+send)",
             round(m["src_mb_per_cpu_s"]), round(m["src_pages_per_cpu_s"]),
             m["src_cpu_s"]],
            ["destination agent per core (MAC+parse+store+forward)",
             round(m["dst_mb_per_cpu_s"]), round(m["dst_pages_per_cpu_s"]),
             m["dst_cpu_s"]],
            ["fake source QEMU (feeder)", None, None, m["feeder_cpu_s"]],
            ["fake destination QEMU (sink)", None, None, m["sink_cpu_s"]],
        ], indent="    "))
    out("  source agent filtering a redirected attempt (in-process: parse "
        "+ digest + filter + re-encode + frame MAC; held: lower half of "
        "the pages, frontier at a quarter):")
    filt = bench_paths.filter_benchmark(stream.data, args.chunk_size,
                                        args.repeat)
    result["redirect_filter"] = filt
    out(table(["path", "MB/CPU-s", "CPU s", "runs", "pages dropped",
               "held sent", "kept", "MB out"], [
        [k, round(v["mb_per_cpu_s"]), v["cpu_s"], v["runs"], v["dropped"],
         v["forwarded_held"], v["kept"], round(v["bytes_out"] / MB)]
        for k, v in filt.items()], indent="    "))
    # The pair's headline figures: the best path this build has.
    best = bench_paths.paths()[0]
    result["pair"] = result["pair_by_path"][best]
    result["path"] = best
    result["native_reason"] = fastpath.reason
    m = result["pair"]["median"]
    per_core = min(m["src_mb_per_cpu_s"], m["dst_mb_per_cpu_s"])
    result["per_core_mb_s"] = per_core
    result["per_core_pass"] = per_core >= TARGET_PER_CORE_MBS
    out("  agent path per core (slower agent, %s): %.0f MB/s -> target >= "
        "%.0f MB/s: %s; 10 GbE aim %.0f MB/s: %s" % (
            best, per_core, TARGET_PER_CORE_MBS,
            verdict(result["per_core_pass"]), AIM_PER_CORE_MBS,
            "met" if per_core >= AIM_PER_CORE_MBS else "not met"))
    del stream
    return result


# ---------------------------------------------------------------------------
# Lab: agents vs direct on shaped links
# ---------------------------------------------------------------------------

def lab_part(args: argparse.Namespace) -> dict[str, Any]:
    from nova_dcmigrate.lab.agents import LabAgents
    from nova_dcmigrate.lab.direct import migrate_direct
    from nova_dcmigrate.lab.image import build_guest_image
    from nova_dcmigrate.lab.qemu import QemuGuest
    from nova_dcmigrate.lab.rabbit import broker_from_env
    from nova_dcmigrate.lab.ramcheck import compare_ram
    from nova_dcmigrate.lab.topology import Lab
    from nova_dcmigrate.lab.via_agents import migrate_via_agents

    out("== 2. Migration through agents vs direct QEMU->QEMU ==")
    out("  2 hosts, %s links, %d MiB guest, %s, %d migrations per method "
        "(interleaved, ping-pong)%s" % (
            args.link, args.memory,
            ("dirtying %d MiB at %s MiB/s" % (
                args.dirty_mib, args.dirty_rate or "max"))
            if args.dirty_mib else "idle", args.repeat,
            "; agents: " + ", ".join(args.agent_conf)
            if args.agent_conf else ""))
    image = build_guest_image()
    broker = broker_from_env()
    migrations: list[dict[str, Any]] = []
    result: dict[str, Any] = {"link": args.link, "memory_mib": args.memory,
                              "agent_conf": args.agent_conf,
                              "dirty_mib": args.dirty_mib,
                              "dirty_rate": args.dirty_rate,
                              "migrations": migrations,
                              "broker_started_here": broker.started_here}
    try:
        with Lab({"src": args.link, "dst": args.link}) as lab:
            extra = "".join("%s\n" % line for line in args.agent_conf)
            with LabAgents(lab, extra_conf=extra) as agents:
                assert agents.api is not None
                guest = QemuGuest.start(lab, "src", image,
                                        memory_mib=args.memory,
                                        dirty_mib=args.dirty_mib,
                                        dirty_rate=args.dirty_rate)
                boot = guest.wait_booted()
                out("  guest booted in %.1f s; settling %.1f s"
                    % (boot, args.settle))
                time.sleep(args.settle)
                order = []
                for i in range(args.repeat):
                    pair = ["direct", "agents"]
                    order += pair if i % 2 == 0 else pair[::-1]
                for n, method in enumerate(order, 1):
                    target = "dst" if guest.host == "src" else "src"
                    rec: dict[str, Any] = {"n": n, "method": method,
                                           "from": guest.host, "to": target}
                    t0 = time.monotonic()
                    if method == "direct":
                        new, res = migrate_direct(lab, guest, target)
                    else:
                        m = migrate_via_agents(lab, agents, guest, target)
                        assert m.result is not None
                        new, res = m.dst_guest, m.result
                        states = [a["state"]
                                  for st in (m.src_status, m.dst_status)
                                  if st for a in st["attempts"]]
                        rec["agent_states"] = states
                        rec["agent_errors"] = [
                            a["error"] for st in (m.src_status, m.dst_status)
                            if st for a in st["attempts"] if a["error"]]
                        for host in (m.src_host, m.dst_host):
                            with contextlib.suppress(Exception):
                                agents.api.cleanup(host, m.migration_id)
                    rec["call_s"] = time.monotonic() - t0
                    rec.update({
                        "total_time_ms": res.total_time_ms,
                        "downtime_ms": res.downtime_ms,
                        "setup_time_ms": res.setup_time_ms,
                        "transferred_bytes": res.transferred_bytes,
                        "normal_pages": res.normal_pages,
                        "dirty_sync_count": res.dirty_sync_count,
                        "mbps": res.mbps, "wall_s": res.wall_time_s})
                    cmp = compare_ram(guest, new)
                    rec["ram_identical"] = cmp.identical
                    migrations.append(rec)
                    _print_migration(rec)
                    if not cmp.identical:
                        new.stop()
                        raise BenchError(
                            "%s migration %d: RAM differs in %d pages, "
                            "first at %#x" % (method, n, cmp.differing_pages,
                                              cmp.first_difference or 0))
                    guest.stop()
                    seen = new.alive_count()
                    new.cont()
                    guest = new
                    # The migrated guest must run; this also lets it settle.
                    guest.wait_alive(seen, timeout=30)
                guest.stop()
    finally:
        broker.stop()
    _lab_summary(result, args.repeat)
    return result


def _print_migration(rec: dict[str, Any]) -> None:
    out("    #%d %-6s %s->%s: total %s ms, downtime %s ms, %.1f MB, "
        "%d syncs, wall %.2f s, RAM %s%s" % (
            rec["n"], rec["method"], rec["from"], rec["to"],
            rec["total_time_ms"], rec["downtime_ms"],
            rec["transferred_bytes"] / MB, rec["dirty_sync_count"],
            rec["wall_s"] or 0.0,
            "identical" if rec["ram_identical"] else "DIFFERS",
            ", agent sessions %s" % "/".join(rec["agent_states"])
            if "agent_states" in rec else ""))
    for err in rec.get("agent_errors", []):
        # QEMU completed and RAM is identical, yet an agent session failed.
        out("      WARNING: agent session error: %s" % err)


def _lab_summary(result: dict[str, Any], repeat: int) -> None:
    migs = result["migrations"]
    out(table(["#", "method", "path", "total ms", "downtime ms",
               "setup ms", "MB sent", "syncs", "wall s", "RAM",
               "agent sessions (src/dst)"], [
        [r["n"], r["method"], "%s->%s" % (r["from"], r["to"]),
         r["total_time_ms"], r["downtime_ms"], r["setup_time_ms"],
         round(r["transferred_bytes"] / MB, 1), r["dirty_sync_count"],
         r["wall_s"], "identical" if r["ram_identical"] else "DIFFERS",
         "/".join(r.get("agent_states", [])) or "-"]
        for r in migs]))
    bad = [r for r in migs if r.get("agent_states")
           and r["agent_states"] != ["completed", "completed"]]
    result["agent_sessions_not_completed"] = len(bad)
    by = {m: [r for r in migs if r["method"] == m]
          for m in ("direct", "agents")}
    rounds = min(len(by["direct"]), len(by["agents"]))
    ratios = [by["agents"][i]["total_time_ms"] / by["direct"][i]
              ["total_time_ms"] for i in range(rounds)]
    diffs = [by["agents"][i]["downtime_ms"] - by["direct"][i]["downtime_ms"]
             for i in range(rounds)]
    med = {m: {k: median([float(r[k]) for r in rs]) for k in
               ("total_time_ms", "downtime_ms", "transferred_bytes",
                "wall_s")} for m, rs in by.items() if rs}
    result.update({
        "rounds": rounds, "time_ratios": ratios, "downtime_diffs_ms": diffs,
        "median": med,
        "time_ratio": median(ratios),
        "time_ratio_of_medians": (med["agents"]["total_time_ms"]
                                  / med["direct"]["total_time_ms"]
                                  if rounds else float("nan")),
        "downtime_diff_ms": median(diffs),
    })
    result["time_pass"] = result["time_ratio"] <= TARGET_TIME_RATIO
    result["downtime_pass"] = result["downtime_diff_ms"] <= TARGET_DOWNTIME_MS
    if rounds:
        out("  median per round (agents vs direct, same round): total time "
            "ratio %.3fx (per round: %s), downtime %+.0f ms (per round: %s)"
            % (result["time_ratio"],
               ", ".join("%.3f" % r for r in ratios),
               result["downtime_diff_ms"],
               ", ".join("%+.0f" % d for d in diffs)))
        out("  medians: direct %.0f ms / %.0f ms downtime, agents %.0f ms / "
            "%.0f ms downtime (ratio of medians %.3fx)" % (
                med["direct"]["total_time_ms"], med["direct"]["downtime_ms"],
                med["agents"]["total_time_ms"], med["agents"]["downtime_ms"],
                result["time_ratio_of_medians"]))


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def summary(results: dict[str, Any]) -> list[str]:
    lines = ["== summary =="]
    tp = results.get("throughput")
    if tp:
        lines.append("stream                      %.1f MB, %d page records "
                     "(%s)" % (tp["stream"]["bytes"] / MB,
                               tp["stream"]["pages"]
                               + tp["stream"]["zero_pages"],
                               tp["stream"]["source"]))
        lines.append("per core, CPU-seconds (valid under load; wall times "
                     "above are not)")
        for name, pair in tp["pair_by_path"].items():
            mi, pm = tp["micro"][name], pair["median"]
            filt = tp["redirect_filter"].get(name)
            lines += [
                "[%s] in-process MB/CPU-s: parse-only %.0f, parse+digest "
                "%.0f, parse+store %.0f (warm %.0f), frame MAC %.0f" % (
                    name, mi["parse-only"]["mb_per_cpu_s"],
                    mi["parse+digest"]["mb_per_cpu_s"],
                    mi["parse+store"]["mb_per_cpu_s"],
                    mi["parse+store warm"]["mb_per_cpu_s"],
                    mi["frame MAC"]["mb_per_cpu_s"]),
                "[%s] destination agent       %6.0f MB/CPU-s  target >= "
                "%.0f: %s" % (
                    name, pm["dst_mb_per_cpu_s"],
                    bench_paths.TARGET_DST_MB_S,
                    verdict(pm["dst_mb_per_cpu_s"]
                            >= bench_paths.TARGET_DST_MB_S)),
                "[%s] source agent (plain)    %6.0f MB/CPU-s" % (
                    name, pm["src_mb_per_cpu_s"]),
            ]
            if filt:
                lines.append(
                    "[%s] source agent filtering %6.0f MB/CPU-s  target >= "
                    "%.0f: %s  (in-process, no socket calls)" % (
                        name, filt["mb_per_cpu_s"],
                        bench_paths.TARGET_FILTER_MB_S,
                        verdict(filt["mb_per_cpu_s"]
                                >= bench_paths.TARGET_FILTER_MB_S)))
        if "native" not in tp["pair_by_path"]:
            lines.append("native per-page code not measured: %s"
                         % tp.get("native_reason"))
        lines.append(
            "agent path per core (%s)   %6.0f MB/s  target >= %.0f: %s" % (
                tp["path"], tp["per_core_mb_s"], TARGET_PER_CORE_MBS,
                verdict(tp["per_core_pass"])))
    elif "throughput_error" in results:
        lines.append("throughput                  ERROR: %s"
                     % results["throughput_error"])
    lab = results.get("lab")
    if lab and lab.get("rounds"):
        lines += [
            "migration time agents/direct %.3fx  target <= %.2fx: %s"
            "  (%s link, %d rounds; ratio of medians %.3fx)" % (
                lab["time_ratio"], TARGET_TIME_RATIO,
                verdict(lab["time_pass"]), lab["link"], lab["rounds"],
                lab["time_ratio_of_medians"]),
            "downtime agents - direct    %+6.0f ms  target <= +%.0f ms: %s"
            "  (direct %.0f ms, agents %.0f ms median)" % (
                lab["downtime_diff_ms"], TARGET_DOWNTIME_MS,
                verdict(lab["downtime_pass"]),
                lab["median"]["direct"]["downtime_ms"],
                lab["median"]["agents"]["downtime_ms"]),
        ]
        if lab.get("agent_sessions_not_completed"):
            lines.append(
                "WARNING                     %d of %d agent migrations "
                "completed in QEMU (RAM identical) but an agent session "
                "did not end 'completed'" % (
                    lab["agent_sessions_not_completed"],
                    len([r for r in lab["migrations"]
                         if r["method"] == "agents"])))
    elif "lab_error" in results:
        lines.append("lab                         ERROR: %s"
                     % results["lab_error"])
    if results.get("interrupted"):
        lines.append("INTERRUPTED                 the run did not finish")
    lines.append("elapsed                     %.0f s" % results["elapsed_s"])
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per throughput measure and migrations per "
                        "method in the lab (default 3)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-lab", action="store_true")
    p.add_argument("--peer-tls", action="store_true",
                   help="the agent pair of part 1 talks mutual TLS 1.3 "
                        "(certificates made with openssl)")
    p.add_argument("--json", metavar="PATH", help="write every number here")
    p.add_argument("--stream", metavar="PATH",
                   help="use this recorded stream (raw or .gz) instead of "
                        "recording one")
    p.add_argument("--record-mem", type=int, default=RECORD_MEM_MIB,
                   help="MiB of the recording guest (default %(default)s)")
    p.add_argument("--record-payload", type=int, default=RECORD_PAYLOAD,
                   help="bytes of random pages in the recording guest "
                        "(default %(default)s)")
    p.add_argument("--chunk-size", type=int, default=1 << 20,
                   help="agent chunk_size (default 1 MiB)")
    p.add_argument("--socket-buffer", type=int, default=4 << 20,
                   help="agent socket_buffer for the loopback pair (default "
                        "4 MiB; 0 = kernel autotuning)")
    p.add_argument("--feed-chunk", type=int, default=1 << 20,
                   help="bytes per send of the fake source QEMU")
    p.add_argument("--link", default="300mbit", help="lab link rate")
    p.add_argument("--memory", type=int, default=256,
                   help="lab guest MiB (default 256)")
    p.add_argument("--dirty-mib", type=int, default=0,
                   help="MiB the lab guest dirties (default 0: idle)")
    p.add_argument("--dirty-rate", type=int, default=0,
                   help="MiB/s the lab guest dirties at (0: max)")
    p.add_argument("--agent-conf", action="append", default=[],
                   metavar="OPT=VALUE",
                   help="extra [dcmigrate_agent] option for the lab agents, "
                        "e.g. socket_buffer=131072 (repeatable)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds the booted lab guest runs first")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log the lab's INFO messages")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.skip_lab and args.skip_throughput:
        p.error("nothing to do")
    return args


_OWNER_PID = os.getpid()


def _sigterm(signum: int, frame: Any) -> None:
    if os.getpid() != _OWNER_PID:
        # A fork we did not make (pyroute2 enters namespaces that way):
        # die as SIGTERM would, without running our cleanup.
        os._exit(128 + signum)
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.argv[0])]
                            + (argv if argv is not None else sys.argv[1:])),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "targets": {"per_core_mb_s": TARGET_PER_CORE_MBS,
                    "aim_per_core_mb_s": AIM_PER_CORE_MBS,
                    "time_ratio": TARGET_TIME_RATIO,
                    "downtime_diff_ms": TARGET_DOWNTIME_MS},
    }
    failed = False
    workdir = tempfile.mkdtemp(prefix="bench-agent-")
    try:
        if not args.skip_throughput:
            try:
                results["throughput"] = throughput_part(args, workdir)
            except BenchError as err:
                failed = True
                results["throughput_error"] = str(err)
                out("  ERROR: %s" % err)
            finally:
                _end_children()
                shutil.rmtree(workdir, ignore_errors=True)
            out()
        if not args.skip_lab:
            try:
                results["lab"] = lab_part(args)
            except Exception as err:  # noqa: BLE001 - reported, then fail
                failed = True
                results["lab_error"] = "%s: %s" % (type(err).__name__, err)
                out("  ERROR: %s" % results["lab_error"])
            out()
    except KeyboardInterrupt:
        if os.getpid() != _OWNER_PID:
            os._exit(130)
        out("\ninterrupted; cleaning up")
        failed = True
        results["interrupted"] = True
    finally:
        if os.getpid() != _OWNER_PID:
            os._exit(1)
        _end_children()
        shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - started
    lines = summary(results)
    for line in lines:
        out(line)
    results["summary"] = lines
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        out("numbers written to %s" % args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
