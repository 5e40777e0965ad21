"""Hold the destination QEMU's SWITCHOVER_ACK until the relays are in.

Why: with the ``switchover-ack`` capability (libvirt 11 turns it on with
``return-path`` when QEMU supports it), the source QEMU does not switch
over before the destination's ``SWITCHOVER_ACK`` arrives on the return
path; until then it keeps iterating with the guest running.  A destination
with no device that needs an ack sends it as soon as the return path opens
(QEMU stream reference, section 3), so the new destination's agent holds it
back until every relayed page is in.  However fast precopy converges, the
relay backlog then never lands in the downtime: a downtime-limit gate only
delays convergence by a few iterations (measured: 15 dirty syncs, then a
5.5 s downtime with a 100 Mbit holder).

The controllers keep their 1 ms downtime limit until the relays are in
all the same: with the real limit QEMU syncs its dirty bitmap on every
iteration while it waits for the ack, and that spinning took the CPU the
relays needed (measured in doc/source/method.rst, 2026-12-04).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from nova_dcmigrate.stream.constants import RP_HEADER
from nova_dcmigrate.stream.constants import RP_MSG_SWITCHOVER_ACK


class SwitchoverAckGate:
    """Return-path filter: passes messages through, holding the ack.

    :param wait_release: blocks until the ack may go; returns False if the
        migration ended meanwhile (then nothing more is sent).
    """

    def __init__(self, wait_release: Callable[[], bool]) -> None:
        self._wait_release = wait_release
        self._pending = bytearray()
        self.passed = False
        #: Seconds the ack was held (None: not seen yet).
        self.held_s: float | None = None

    def feed(self, data: bytes | memoryview,
             send: Callable[[bytes | memoryview], None]) -> bool:
        """Forward ``data`` (return-path bytes from the destination QEMU).

        :returns: False if the migration ended while the ack was held.
        """
        if self.passed:
            send(data)
            return True
        pending = self._pending
        pending += data
        pos = 0
        while len(pending) - pos >= RP_HEADER.size:
            mtype, length = RP_HEADER.unpack_from(pending, pos)
            end = pos + RP_HEADER.size + length
            if end > len(pending):
                break
            if mtype == RP_MSG_SWITCHOVER_ACK:
                if pos:
                    send(bytes(pending[:pos]))
                held = time.monotonic()
                if not self._wait_release():
                    return False
                self.held_s = time.monotonic() - held
                self.passed = True
                send(bytes(pending[pos:]))
                pending.clear()
                return True
            pos = end
        if pos:
            send(bytes(pending[:pos]))
            del pending[:pos]
        return True
