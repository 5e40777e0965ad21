#!/usr/bin/env python3
"""Record a real QEMU precopy migration stream for the codec's tests.

Starts a destination QEMU (``-incoming tcp:127.0.0.1:P2 -S``) and a source
QEMU, puts a recording relay on 127.0.0.1:P1 that forwards both directions
(the return path carries PONG, SWITCHOVER_ACK and SHUT; without it the
source never completes, reference ``qemu-migration-stream.md`` section 2.3)
and saves the source->destination bytes.  Like libvirt (section 4.2) it
enables ``return-path`` on both sides and an unlimited ``max-bandwidth``,
then migrates to the relay, waits for completion and kills both QEMUs.

The guest runs only SeaBIOS (no boot device), with a 1 MiB payload loaded
at guest-physical 1 MiB by ``-device loader`` so that the stream carries
non-zero pages.  Each payload page is a seeded random ``--unit`` bytes
repeated to 4 KiB: every page differs but the capture still gzips well.

Output: ``<out>.gz`` (the forward stream; ``<out>.bin`` uncompressed with
``--no-gzip``) and ``<out>.json`` (how it was recorded, QEMU's own page
counters, payload parameters).

Example::

    tools/record_stream.py --machine pc tests/unit/stream/data/qemu10-pc
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any
from typing import Iterator

from qemu.qmp import legacy

QEMU = "qemu-system-x86_64"
PAYLOAD_ADDR = 0x100000


def payload_bytes(seed: int, size: int, unit: int) -> bytes:
    """Seeded payload: per page, ``unit`` random bytes repeated to 4 KiB."""
    rng = random.Random(seed)
    pages = []
    for _ in range(size // 4096):
        pages.append(rng.randbytes(unit) * (4096 // unit))
    return b"".join(pages)


#: Real-mode boot sector (hand-assembled) for ``--dirtier``: with
#: interrupts off it writes a pass counter into the first word of each
#: 4 KiB page from 0x10000 to 0x8ffff, forever::
#:
#:     cli; xor bx,bx
#:     outer: inc bx; mov ax,0x1000
#:     inner: mov es,ax; mov [es:0],bx; add ax,0x100; cmp ax,0x9000
#:            jb inner; jmp outer
DIRTIER_CODE = bytes.fromhex(
    "fa31db43b800108ec026891e00000500013d009072f1ebeb")


def boot_sector() -> bytes:
    """A 64 KiB raw disk whose MBR is :data:`DIRTIER_CODE`."""
    sector = DIRTIER_CODE.ljust(510, b"\x00") + b"\x55\xaa"
    return sector.ljust(64 << 10, b"\x00")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Relay:
    """Accept one connection on 127.0.0.1 and relay it to ``dest_port``."""

    def __init__(self, dest_port: int) -> None:
        self.dest_port = dest_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = int(self.listener.getsockname()[1])
        self.forward = bytearray()
        self.backward_bytes = 0
        self.error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._run, daemon=True)
        self._accept.start()

    def _run(self) -> None:
        try:
            self.listener.settimeout(120)
            src, _ = self.listener.accept()
            dst = socket.create_connection(("127.0.0.1", self.dest_port))
            for sock in (src, dst):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fwd = threading.Thread(target=self._pump, args=(src, dst, True),
                                   daemon=True)
            back = threading.Thread(target=self._pump,
                                    args=(dst, src, False), daemon=True)
            self._threads = [fwd, back]
            fwd.start()
            back.start()
            fwd.join()
            back.join()
            src.close()
            dst.close()
        except BaseException as err:  # reported by the main thread
            self.error = err
        finally:
            self.listener.close()

    def _pump(self, rx: socket.socket, tx: socket.socket,
              record: bool) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while True:
                n = rx.recv_into(buf)
                if not n:
                    break
                if record:
                    self.forward += view[:n]
                else:
                    self.backward_bytes += n
                tx.sendall(view[:n])
        except OSError:
            pass
        with contextlib.suppress(OSError):
            tx.shutdown(socket.SHUT_WR)

    def wait(self, timeout: float) -> bool:
        self._accept.join(timeout)
        return not self._accept.is_alive()


class Qemu:
    """One QEMU process with a QMP socket."""

    def __init__(self, name: str, workdir: str, args: list[str],
                 disk: bool = False) -> None:
        self.name = name
        if disk:
            # One copy per side: IDE disks cannot be read-only and both
            # QEMUs would fight over the image lock.
            path = os.path.join(workdir, name + "-boot.img")
            with open(path, "wb") as f:
                f.write(boot_sector())
            args = args + ["-drive", "file=%s,format=raw,if=ide" % path]
        self.qmp_path = os.path.join(workdir, name + ".qmp")
        self.log_path = os.path.join(workdir, name + ".log")
        cmd = [QEMU, *args, "-qmp",
               "unix:%s,server=on,wait=off" % self.qmp_path]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.qmp_path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("%s QEMU did not start: %s"
                                   % (name, self.log()))
            time.sleep(0.05)
        self.qmp = legacy.QEMUMonitorProtocol(self.qmp_path)
        self.qmp.connect()

    def cmd(self, name: str, **args: Any) -> Any:
        return self.qmp.cmd(name, **args)

    def log(self) -> str:
        with open(self.log_path, "rb") as log:
            return log.read().decode(errors="replace")

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.qmp.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def qemus(workdir: str, guest: list[str], dest_port: int,
          disk: bool) -> Iterator[tuple[Qemu, Qemu]]:
    started: list[Qemu] = []
    try:
        dst = Qemu("dst", workdir, guest + [
            "-S", "-incoming", "tcp:127.0.0.1:%d" % dest_port], disk)
        started.append(dst)
        src = Qemu("src", workdir, guest, disk)
        started.append(src)
        yield src, dst
    finally:
        for q in started:
            q.kill()


def wait_status(src: Qemu, until: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = src.cmd("query-migrate")
        if info.get("status") in until or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


def record(args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="record-stream-")
    try:
        payload = payload_bytes(args.seed, args.payload_size, args.unit)
        payload_path = os.path.join(workdir, "payload.bin")
        with open(payload_path, "wb") as f:
            f.write(payload)
        guest = ["-accel", "tcg", "-machine", args.machine,
                 "-m", str(args.mem), "-nodefaults", "-display", "none",
                 "-device", "loader,file=%s,addr=%#x"
                 % (payload_path, PAYLOAD_ADDR)]
        dest_port = free_port()
        relay = None
        with qemus(workdir, guest, dest_port, args.dirtier) as (src, dst):
            relay = Relay(dest_port)
            caps = ["return-path", *args.cap]
            for q in (src, dst):
                q.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": cap, "state": True} for cap in caps])
            params: dict[str, Any] = {"max-bandwidth": 100 << 30}
            if args.iterate:
                # Slow and with a tiny downtime limit QEMU keeps iterating
                # while the guest dirties memory (use --dirtier).
                params = {"max-bandwidth": 4 << 20, "downtime-limit": 1}
            if "xbzrle" in args.cap:
                params["xbzrle-cache-size"] = 4 << 20
            src.cmd("migrate-set-parameters", **params)
            time.sleep(args.settle)
            src.cmd("migrate", uri="tcp:127.0.0.1:%d" % relay.port)
            info: dict[str, Any] = {}
            if args.iterate:
                deadline = time.monotonic() + args.timeout
                while time.monotonic() < deadline:
                    info = src.cmd("query-migrate")
                    if (info.get("ram", {}).get("dirty-sync-count", 0)
                            >= args.iterate or info.get("status") in (
                                "completed", "failed")):
                        break
                    time.sleep(0.05)
                src.cmd("migrate-set-parameters",
                        **{"max-bandwidth": 100 << 30,
                           "downtime-limit": 300})
            info = wait_status(src, {"completed", "failed", "cancelled"},
                               args.timeout)
            if info.get("status") not in ("completed", "failed",
                                          "cancelled"):
                src.cmd("migrate_cancel")
                info = wait_status(src, {"failed", "cancelled"}, 10)
            relay.wait(30)
            dst_status = dst.cmd("query-status")
            dst_migrate = dst.cmd("query-migrate")
        if relay.error is not None:
            raise relay.error
        data = bytes(relay.forward)
        version = subprocess.run([QEMU, "--version"], capture_output=True,
                                 text=True, check=True).stdout.splitlines()[0]
        meta = {
            "recorded_with": "tools/record_stream.py " + " ".join(
                sys.argv[1:]),
            "qemu": version,
            "machine": args.machine,
            "mem_mib": args.mem,
            "dirtier": (DIRTIER_CODE.hex() if args.dirtier else None),
            "capabilities": caps,
            "payload": {"addr": PAYLOAD_ADDR, "size": args.payload_size,
                        "seed": args.seed, "unit": args.unit},
            "stream_bytes": len(data),
            "stream_sha256": hashlib.sha256(data).hexdigest(),
            "return_path_bytes": relay.backward_bytes,
            "source_status": info.get("status"),
            "source_ram": info.get("ram"),
            "source_xbzrle": info.get("xbzrle-cache"),
            "dest_status": dst_status.get("status"),
            "dest_migrate_status": dst_migrate.get("status"),
        }
        if args.no_gzip:
            # Large captures of random pages do not compress; raw is faster.
            with open(args.out + ".bin", "wb") as f:
                f.write(data)
        else:
            with gzip.open(args.out + ".gz", "wb", compresslevel=9) as f:
                f.write(data)
        with open(args.out + ".json", "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.write("\n")
        return meta
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output path without extension")
    parser.add_argument("--machine", default="pc")
    parser.add_argument("--mem", type=int, default=32, help="guest MiB")
    parser.add_argument("--cap", action="append", default=[],
                        help="extra capability on both sides (repeatable)")
    parser.add_argument("--iterate", type=int, default=0,
                        help="throttle until this many dirty syncs happened")
    parser.add_argument("--dirtier", action="store_true",
                        help="boot a sector that dirties 128 low pages")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--payload-size", type=int, default=1 << 20)
    parser.add_argument("--unit", type=int, default=512,
                        help="random bytes per payload page (divides 4096)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds the source runs before migrating")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--no-gzip", action="store_true",
                        help="write the stream uncompressed to <out>.bin")
    args = parser.parse_args()
    meta = record(args)
    json.dump(meta, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
