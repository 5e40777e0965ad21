#!/usr/bin/env python3
"""Throughput of the migration-stream codec (nova_dcmigrate.stream).

The reference measured ~326 MB/s parse-only and ~118 MB/s with blake2b
digests for a naive parser (``qemu-migration-stream.md`` section 6); a
10 GbE data plane needs >= 1 GB/s.  This tool feeds a synthetic stream of
random pages (default 256 MiB, all ``PAGE|CONTINUE`` records in ``pc.ram``)
through ``StreamReader.get_buffer``/``buffer_updated`` in 1 MiB reads, as a
socket relay would, and reports MB/s and pages/s for:

* parse only (a no-op visitor),
* parse + ``xxhash.xxh3_128_digest`` of every page,
* re-encoding every page with ``StreamWriter`` (copy-through proxy),

and parse-only for the recorded streams in ``tests/unit/stream/data``.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import os
import struct
import sys
import time
from typing import Callable

import xxhash

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nova_dcmigrate.stream import constants  # noqa: E402
from nova_dcmigrate.stream import records  # noqa: E402
from nova_dcmigrate.stream import StreamError  # noqa: E402
from nova_dcmigrate.stream import StreamReader  # noqa: E402
from nova_dcmigrate.stream import StreamVisitor  # noqa: E402
from nova_dcmigrate.stream import StreamWriter  # noqa: E402
from tests.unit.stream import streamgen  # noqa: E402

DATA_DIR = os.path.join(os.path.dirname(__file__), "..", "tests", "unit",
                        "stream", "data")


class DigestVisitor(StreamVisitor):
    """Keeps an xxh3-128 digest per page, as the source agent does."""

    def __init__(self) -> None:
        self.digests: dict[tuple[int, int], bytes] = {}

    def on_page(self, block: records.RamBlock, page: int,
                data: memoryview) -> None:
        self.digests[block.index, page] = xxhash.xxh3_128_digest(data)


class CopyVisitor(streamgen.ReencodeVisitor):
    """Re-encodes into a writer and drains it every section."""

    def on_section_end(self, kind: int, section_id: int) -> None:
        super().on_section_end(kind, section_id)
        self.writer.take()

    def on_page(self, block: records.RamBlock, page: int,
                data: memoryview) -> None:
        self.writer.page(block, page, data)
        if self.writer.pending() > 1 << 20:
            self.writer.take()


def synthetic_stream(mib: int) -> bytes:
    npages = (mib << 20) // constants.PAGE_SIZE
    blocks = dict(streamgen.DEFAULT_BLOCKS)
    blocks["pc.ram"] = max(blocks["pc.ram"], 2 * (mib << 20))
    start = streamgen.make_ram_start(blocks)
    w = StreamWriter()
    w.preamble(streamgen.make_preamble())
    w.command(constants.CMD_OPEN_RETURN_PATH)
    w.command(constants.CMD_PING, struct.pack(">I", 1))
    w.ram_start(start)
    random_data = os.urandom(npages * constants.PAGE_SIZE)
    per_section = 4096
    for first in range(0, npages, per_section):
        w.begin_section(constants.SECTION_PART)
        for page in range(first, min(npages, first + per_section)):
            off = page * constants.PAGE_SIZE
            w.page("pc.ram", page,
                   random_data[off:off + constants.PAGE_SIZE])
        w.end_section()
    w.command(constants.CMD_SWITCHOVER_START)
    w.begin_section(constants.SECTION_END)
    w.end_section()
    w.tail(streamgen.fake_tail())
    return w.take()


def run(data: bytes, visitor: StreamVisitor, read_size: int) -> StreamReader:
    """Feed ``data`` as a relay would: recv_into the reader's buffer."""
    reader = StreamReader(visitor)
    src = memoryview(data)
    pos, total = 0, len(data)
    get_buffer = reader.get_buffer
    updated = reader.buffer_updated
    while pos < total:
        view = get_buffer(read_size)
        n = min(read_size, total - pos)
        view[:n] = src[pos:pos + n]
        updated(n)
        pos += n
    reader.close()
    return reader


def measure(label: str, data: bytes, make_visitor: Callable[[], StreamVisitor],
            repeat: int, read_size: int) -> None:
    best = float("inf")
    reader = None
    for _ in range(repeat):
        visitor = make_visitor()
        t0 = time.perf_counter()
        reader = run(data, visitor, read_size)
        best = min(best, time.perf_counter() - t0)
    assert reader is not None
    print("%-36s %8.1f MB/s %9.0f pages/s %9.0f records/s  (%d pages, "
          "%d zero, %.1f MB, %.4f s)"
          % (label, len(data) / best / 1e6, reader.pages / best,
             (reader.pages + reader.zero_pages) / best, reader.pages,
             reader.zero_pages, len(data) / 1e6, best))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256,
                        help="MiB of random page data (default 256)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--read-size", type=int, default=1 << 20)
    args = parser.parse_args()

    t0 = time.perf_counter()
    data = synthetic_stream(args.mib)
    print("synthetic stream: %d MiB of random pages, %.1f MB, built in "
          "%.1f s" % (args.mib, len(data) / 1e6, time.perf_counter() - t0))
    measure("parse only", data, StreamVisitor, args.repeat, args.read_size)
    measure("parse + xxh3_128 per page", data, DigestVisitor, args.repeat,
            args.read_size)
    measure("parse + re-encode (StreamWriter)", data,
            lambda: CopyVisitor(StreamWriter()), args.repeat,
            args.read_size)
    del data

    for path in sorted(glob.glob(os.path.join(DATA_DIR, "*.gz"))):
        with gzip.open(path) as f:
            recorded = f.read()
        name = os.path.basename(path)
        try:
            measure("recorded %s" % name, recorded, StreamVisitor,
                    args.repeat, args.read_size)
        except StreamError as err:
            print("recorded %s: rejected (%s: %s)"
                  % (name, type(err).__name__, err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
