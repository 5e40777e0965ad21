"""Global page numbering of a VM's RAM blocks.

Why: a redirect plan talks about "pages below the frontier", and QEMU's
first pass walks the blocks in START(ram) order, each from its first page
up.  Numbering every page by (block order, page) gives one ascending axis
for the source's first pass and a descending one for relays.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from nova_dcmigrate.agent import exception
from nova_dcmigrate.stream import RamBlock
from nova_dcmigrate.stream import RamStart

MAX_BLOCKS = 4096


@dataclass(frozen=True)
class Layout:
    names: tuple[str, ...]
    lengths: tuple[int, ...]
    npages: tuple[int, ...]
    bases: tuple[int, ...]
    total_pages: int

    @classmethod
    def from_blocks(cls, blocks: Sequence[tuple[str, int]]) -> Layout:
        names, lengths, npages, bases = [], [], [], []
        base = 0
        for name, length in blocks:
            n = -(-int(length) // 4096)
            names.append(str(name))
            lengths.append(int(length))
            npages.append(n)
            bases.append(base)
            base += n
        return cls(tuple(names), tuple(lengths), tuple(npages), tuple(bases),
                   base)

    @classmethod
    def from_start(cls, start: RamStart) -> Layout:
        return cls.from_blocks([(b.name, b.used_length)
                                for b in start.blocks])

    def g(self, block: RamBlock | int, page: int) -> int:
        idx = block if isinstance(block, int) else block.index
        return self.bases[idx] + page

    def locate(self, g: int) -> tuple[int, int]:
        """Global page -> (block index, page)."""
        # Few blocks (a handful of ROMs and RAM): a linear scan from the
        # end is fastest in practice.
        for idx in range(len(self.bases) - 1, -1, -1):
            if g >= self.bases[idx]:
                return idx, g - self.bases[idx]
        raise IndexError(g)

    def to_json(self) -> bytes:
        return json.dumps({"blocks": [[n, length] for n, length in
                                      zip(self.names, self.lengths)]}
                          ).encode()

    @classmethod
    def from_json(cls, raw: bytes | memoryview, peer: str) -> Layout:
        try:
            doc = json.loads(bytes(raw))
            blocks = doc["blocks"]
            if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
                raise ValueError("bad block list")
            pairs = []
            for item in blocks:
                name, length = item
                if not isinstance(name, str) or not 0 < len(name) < 256:
                    raise ValueError("bad block name %r" % (name,))
                if not isinstance(length, int) or not 0 < length < 1 << 50:
                    raise ValueError("bad block length %r" % (length,))
                pairs.append((name, length))
        except (ValueError, TypeError, KeyError) as err:
            raise exception.PeerProtocolError(
                peer=peer, reason="invalid block layout: %s" % err) from err
        return cls.from_blocks(pairs)
