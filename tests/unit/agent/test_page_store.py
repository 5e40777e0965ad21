"""Page store: digests, zero pages, counters, reconfiguration."""

from __future__ import annotations

import os

import xxhash

from nova_dcmigrate.agent.page_store import ABSENT
from nova_dcmigrate.agent.page_store import DATA
from nova_dcmigrate.agent.page_store import PageStore
from nova_dcmigrate.agent.page_store import ZERO
from nova_dcmigrate.agent.page_store import ZERO_PAGE
from nova_dcmigrate.stream import RamBlock
from nova_dcmigrate.stream import RamStart

BLOCKS = (RamBlock(0, "pc.ram", 64 * 4096), RamBlock(1, "pc.bios", 4 * 4096))


def _start(blocks=BLOCKS) -> RamStart:
    return RamStart(section_id=2, instance_id=0, version_id=4,
                    total_bytes=sum(b.used_length for b in blocks),
                    blocks=tuple(blocks), ignore_shared=False, raw=b"")


def test_put_and_get_with_keyed_digest():
    store = PageStore(seed=1234)
    store.configure(_start())
    data = os.urandom(4096)
    d = store.put_page(BLOCKS[0], 5, data)
    assert d == xxhash.xxh3_128_digest(data, 1234)
    assert d != xxhash.xxh3_128_digest(data, 0)   # seed matters
    assert bytes(store.page("pc.ram", 5)) == data
    assert store.digest("pc.ram", 5) == d
    assert store.state("pc.ram", 6) == ABSENT
    assert store.page("pc.ram", 6) is None
    assert store.counters().pages == 1


def test_zero_then_data_then_zero_counts():
    store = PageStore(seed=1)
    store.configure(_start())
    store.put_zero(BLOCKS[1], 3)
    assert store.state("pc.bios", 3) == ZERO
    assert store.page("pc.bios", 3) == ZERO_PAGE
    c = store.counters()
    assert (c.pages, c.zero_pages) == (0, 1)
    store.put_page(BLOCKS[1], 3, b"\1" * 4096)
    assert store.state("pc.bios", 3) == DATA
    c = store.counters()
    assert (c.pages, c.zero_pages) == (1, 0)
    store.put_zero(BLOCKS[1], 3)
    assert bytes(store.page("pc.bios", 3)) == ZERO_PAGE
    c = store.counters()
    assert (c.pages, c.zero_pages, c.bytes_held) == (0, 1, 4096)


def test_inventory_lists_held_pages_only():
    store = PageStore(seed=7)
    store.configure(_start())
    store.put_page(BLOCKS[0], 0, b"a" * 4096)
    store.put_zero(BLOCKS[1], 2)
    inv = list(store.inventory())
    assert [(b, p) for b, p, _d in inv] == [("pc.ram", 0), ("pc.bios", 2)]


def test_same_layout_keeps_pages_new_layout_resets():
    store = PageStore(seed=7)
    store.configure(_start())
    store.put_page(BLOCKS[0], 9, b"z" * 4096)
    store.configure(_start())           # resumed attempt, same VM shape
    assert store.state("pc.ram", 9) == DATA
    other = (RamBlock(0, "pc.ram", 128 * 4096),)
    store.configure(_start(other))       # different VM shape
    assert store.state("pc.ram", 9) == ABSENT
    assert store.counters().pages == 0
