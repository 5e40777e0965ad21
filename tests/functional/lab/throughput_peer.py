"""Sender/receiver used by the lab's link-shaping test.

Run inside lab hosts (``Lab.spawn``):

    throughput_peer.py recv ADDRESS PORT SKIP_S
    throughput_peer.py send ADDRESS PORT SECONDS

The receiver accepts one connection and prints one JSON line with the bytes
and seconds it measured after skipping the first SKIP_S seconds (TCP slow
start and the tbf bucket), so the figure reflects the shaped steady state.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def recv(address: str, port: int, skip: float) -> None:
    with socket.create_server((address, port)) as server:
        print("LISTENING", flush=True)
        conn, _ = server.accept()
    buf = bytearray(1 << 20)
    total = 0
    start = mark = None
    with conn:
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            now = time.monotonic()
            if start is None:
                start = now
            if mark is None and now - start >= skip:
                mark = now
            elif mark is not None:
                total += n
            end = now
    print(json.dumps({"bytes": total, "seconds": end - mark}), flush=True)


def send(address: str, port: int, seconds: float) -> None:
    chunk = b"\xa5" * (256 * 1024)
    deadline = time.monotonic() + seconds
    with socket.create_connection((address, port), timeout=10) as conn:
        while time.monotonic() < deadline:
            conn.sendall(chunk)


if __name__ == "__main__":
    mode, address, port, value = sys.argv[1:5]
    if mode == "recv":
        recv(address, int(port), float(value))
    else:
        send(address, int(port), float(value))
