"""Tests of the lab's pure helpers and guest sources (no root needed)."""

from __future__ import annotations

import gzip
from pathlib import Path
import shutil
import stat
import subprocess

import pytest

from nova_dcmigrate.lab import exception
from nova_dcmigrate.lab import image
from nova_dcmigrate.lab import qemu
from nova_dcmigrate.lab import ramcheck
from nova_dcmigrate.lab import topology


@pytest.mark.parametrize("text,bps", [
    ("300mbit", 300_000_000), ("1gbit", 10**9), ("1.5Gbit", 1_500_000_000),
    ("10mbps", 80_000_000), ("64kbit", 64_000), ("2000000", 2_000_000),
])
def test_parse_rate(text: str, bps: int) -> None:
    assert topology.parse_rate(text) == bps


@pytest.mark.parametrize("text", ["fast", "10 furlongs", "1kbit", "-5mbit"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(exception.InvalidLabSpec):
        topology.parse_rate(text)


def test_tbf_burst() -> None:
    assert topology.tbf_burst(100 * 10**6) == 50_000
    assert topology.tbf_burst(10**9) == 500_000
    assert topology.tbf_burst(10**6) == topology.TBF_MIN_BURST


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes, int, int]]:
    entries = {}
    offset = 0
    while True:
        assert data[offset:offset + 6] == b"070701"
        fields = [int(data[offset + 6 + 8 * i:offset + 14 + 8 * i], 16)
                  for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_at = offset + 110
        name = data[name_at:name_at + namesize - 1].decode()
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        body = data[data_at:data_at + size]
        offset = data_at + size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body, fields[9], fields[10])


def test_initramfs_is_valid_reproducible_newc(tmp_path: Path) -> None:
    entries = [
        image._Entry.directory("bin"),
        image._Entry.char_device("dev/console", 5, 1),
        image._Entry.file("init", b"#!/bin/sh\n", 0o755),
        image._Entry.symlink("bin/sh", "busybox"),
    ]
    first, second = tmp_path / "a.gz", tmp_path / "b.gz"
    image._write_initramfs(entries, first)
    image._write_initramfs(entries, second)
    assert first.read_bytes() == second.read_bytes()

    parsed = _read_newc(gzip.decompress(first.read_bytes()))
    assert set(parsed) == {"bin", "dev/console", "init", "bin/sh"}
    mode, body, major, minor = parsed["dev/console"]
    assert stat.S_ISCHR(mode) and (major, minor) == (5, 1)
    mode, body, _, _ = parsed["init"]
    assert stat.S_ISREG(mode) and mode & 0o777 == 0o755
    assert body == b"#!/bin/sh\n"
    mode, body, _, _ = parsed["bin/sh"]
    assert stat.S_ISLNK(mode) and body == b"busybox"

    if shutil.which("cpio"):
        listing = subprocess.run(
            ["cpio", "-it", "--quiet"], input=gzip.decompress(
                first.read_bytes()), capture_output=True, check=True)
        assert listing.stdout.decode().split() == [
            "bin", "dev/console", "init", "bin/sh"]


def test_cache_key_follows_sources(tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "guest"
    shutil.copytree(image.GUEST_SRC_DIR, src)
    monkeypatch.setattr(image, "GUEST_SRC_DIR", src)
    key = image._cache_key("linux-image-6.1.0-1-amd64", "6.1.1-1", "1:1.35")
    assert key == image._cache_key("linux-image-6.1.0-1-amd64", "6.1.1-1",
                                   "1:1.35")
    assert key != image._cache_key("linux-image-6.1.0-2-amd64", "6.1.2-1",
                                   "1:1.35")
    (src / "dirty.c").write_text((src / "dirty.c").read_text() + "\n")
    assert key != image._cache_key("linux-image-6.1.0-1-amd64", "6.1.1-1",
                                   "1:1.35")


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(image.CACHE_ENV, raising=False)
    assert image.cache_root() == image.DEFAULT_CACHE_ROOT
    monkeypatch.setenv(image.CACHE_ENV, str(tmp_path))
    assert image.cache_root() == tmp_path
    assert image.cache_root(tmp_path / "x") == tmp_path / "x"


@pytest.mark.skipif(not shutil.which("gcc"), reason="gcc is not installed")
def test_dirtier_compiles_and_runs(tmp_path: Path) -> None:
    binary = tmp_path / "dirty"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
                    str(binary), str(image.GUEST_SRC_DIR / "dirty.c")],
                   check=True)
    usage = subprocess.run([str(binary)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
    proc = subprocess.Popen([str(binary), "4", "200"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "DIRTY_RUNNING mib=4 rate=200"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not shutil.which("busybox"), reason="no busybox")
def test_init_script_parses() -> None:
    subprocess.run(["busybox", "sh", "-n",
                    str(image.GUEST_SRC_DIR / "init")], check=True)


def test_migration_result_from_query() -> None:
    info = {"status": "completed", "total-time": 5564, "downtime": 2114,
            "setup-time": 1, "cpu-throttle-percentage": 20,
            "ram": {"transferred": 199354944, "total": 268435456,
                    "normal": 48000, "duplicate": 30000,
                    "dirty-sync-count": 5, "mbps": 286.7}}
    result = qemu.MigrationResult.from_query(info, 5.7)
    assert result.total_time_ms == 5564 and result.downtime_ms == 2114
    assert result.transferred_bytes == 199354944
    assert result.dirty_sync_count == 5 and result.cpu_throttle_percent == 20
    assert result.wall_time_s == 5.7
    assert "downtime=2114ms" in result.summary()


def testcompare_files_counts_pages(tmp_path: Path) -> None:
    size = 64 * ramcheck.PAGE_SIZE + ramcheck._CHUNK
    a = bytearray(size)
    b = bytearray(size)
    for page in (3, 4, 64 + 1024 - 1):
        b[page * ramcheck.PAGE_SIZE + 17] = 0xFF
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    result = ramcheck.compare_files(tmp_path / "a", tmp_path / "b", size)
    assert not result.identical
    assert result.differing_pages == 3
    assert result.first_difference == 3 * ramcheck.PAGE_SIZE
    assert result.sha256_src != result.sha256_dst
    same = ramcheck.compare_files(tmp_path / "a", tmp_path / "a", size)
    assert same.identical and same.first_difference is None
