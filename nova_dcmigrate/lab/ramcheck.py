"""Check that a migration delivered guest RAM exactly.

A migration that "completes" can still be wrong: QEMU 7.2 silently lost
pages of fast-dirtying TCG guests, and a redirecting relay can drop or
reorder pages.  Comparing the source's and the destination's physical
memory while both are stopped is the ground truth every lab test uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
import time

from oslo_log import log as logging

from nova_dcmigrate.lab import exception
from nova_dcmigrate.lab.qemu import QemuGuest

LOG = logging.getLogger(__name__)

PAGE_SIZE = 4096
_CHUNK = 4 * 1024 * 1024
#: Run states in which guest RAM cannot change.
_STOPPED_STATES = frozenset({"paused", "postmigrate", "inmigrate",
                             "finish-migrate", "prelaunch", "suspended"})


@dataclasses.dataclass(frozen=True)
class RamComparison:
    identical: bool
    #: Number of 4 KiB pages whose content differs.
    differing_pages: int
    #: Guest-physical address of the first differing page, if any.
    first_difference: int | None
    sha256_src: str
    sha256_dst: str
    size_bytes: int
    #: Seconds spent dumping and comparing.
    elapsed_s: float


def compare_ram(src: QemuGuest, dst: QemuGuest,
                size_bytes: int | None = None) -> RamComparison:
    """Dump both guests' RAM with ``pmemsave`` and compare it page by page.

    Both guests must be stopped (after a completed migration the source is
    ``postmigrate`` and the destination ``paused``).  The dumps go to the
    source's lab workdir and are deleted afterwards.

    :param size_bytes: bytes from guest-physical 0; defaults to the smaller
        guest's RAM size.
    :raises RamCheckError: if a guest is running or a dump is short.
    """
    if size_bytes is None:
        size_bytes = min(src.memory_bytes, dst.memory_bytes)
    if size_bytes <= 0 or size_bytes % PAGE_SIZE:
        raise exception.RamCheckError(
            src=src.name, dst=dst.name,
            reason=f"size {size_bytes} is not a positive multiple of "
                   f"{PAGE_SIZE}")
    for guest in (src, dst):
        status = guest.status()
        if status not in _STOPPED_STATES:
            raise exception.RamCheckError(
                src=src.name, dst=dst.name,
                reason=f"{guest.name} is {status}; RAM can only be compared "
                       f"while both guests are stopped")

    started = time.monotonic()
    workdir = src.lab.workdir
    src_dump = workdir / f"{src.name}.ram"
    dst_dump = workdir / f"{dst.name}.ram"
    try:
        src.pmemsave(src_dump, size_bytes)
        dst.pmemsave(dst_dump, size_bytes)
        for dump in (src_dump, dst_dump):
            actual = dump.stat().st_size
            if actual != size_bytes:
                raise exception.RamCheckError(
                    src=src.name, dst=dst.name,
                    reason=f"{dump} has {actual} bytes, expected "
                           f"{size_bytes}")
        result = compare_files(src_dump, dst_dump, size_bytes)
    finally:
        for dump in (src_dump, dst_dump):
            dump.unlink(missing_ok=True)
    result = dataclasses.replace(result,
                                 elapsed_s=time.monotonic() - started)
    if result.identical:
        LOG.info("RAM of %s and %s is identical (%d MiB, sha256 %s, "
                 "%.1f s)", src.name, dst.name, size_bytes >> 20,
                 result.sha256_src[:16], result.elapsed_s)
    else:
        LOG.warning("RAM of %s and %s differs: %d pages, first at %#x",
                    src.name, dst.name, result.differing_pages,
                    result.first_difference)
    return result


def compare_files(a: Path, b: Path, size: int) -> RamComparison:
    hash_a = hashlib.sha256()
    hash_b = hashlib.sha256()
    differing = 0
    first: int | None = None
    offset = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while offset < size:
            chunk_a = fa.read(_CHUNK)
            chunk_b = fb.read(_CHUNK)
            hash_a.update(chunk_a)
            hash_b.update(chunk_b)
            if chunk_a != chunk_b:
                view_a = memoryview(chunk_a)
                view_b = memoryview(chunk_b)
                for page in range(0, len(chunk_a), PAGE_SIZE):
                    if view_a[page:page + PAGE_SIZE] != \
                            view_b[page:page + PAGE_SIZE]:
                        differing += 1
                        if first is None:
                            first = offset + page
            offset += len(chunk_a)
            if not chunk_a:
                break
    return RamComparison(identical=differing == 0,
                         differing_pages=differing, first_difference=first,
                         sha256_src=hash_a.hexdigest(),
                         sha256_dst=hash_b.hexdigest(), size_bytes=size,
                         elapsed_s=0.0)
