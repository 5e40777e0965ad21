"""The destination's SWITCHOVER_ACK is held until the relays are in."""

from __future__ import annotations

import struct
import threading

from nova_dcmigrate.agent.return_gate import SwitchoverAckGate


def msg(mtype: int, data: bytes = b"") -> bytes:
    return struct.pack(">HH", mtype, len(data)) + data


PONG = msg(2, b"\x00\x00\x00\x01")
ACK = msg(7)
SHUT = msg(1, b"\x00\x00\x00\x00")


def test_messages_before_the_ack_pass_at_once_even_split_bytewise():
    release = threading.Event()
    sent: list[bytes] = []
    gate = SwitchoverAckGate(lambda: release.wait(10))
    data = PONG + PONG
    for i in range(len(data)):
        assert gate.feed(data[i:i + 1], lambda b: sent.append(bytes(b)))
    assert b"".join(sent) == PONG + PONG
    assert not gate.passed


def test_ack_waits_for_release_then_everything_flows():
    release = threading.Event()
    sent: list[bytes] = []
    gate = SwitchoverAckGate(lambda: release.wait(10))
    t = threading.Thread(target=gate.feed,
                         args=(PONG + ACK + PONG[:3],
                               lambda b: sent.append(bytes(b))))
    t.start()
    t.join(0.3)
    assert t.is_alive(), "the ack went through before the release"
    assert b"".join(sent) == PONG
    release.set()
    t.join(5)
    assert b"".join(sent) == PONG + ACK + PONG[:3]
    assert gate.passed and gate.held_s is not None and gate.held_s >= 0.25
    gate.feed(PONG[3:] + SHUT, lambda b: sent.append(bytes(b)))
    assert b"".join(sent) == PONG + ACK + PONG + SHUT


def test_migration_ending_while_held_sends_nothing_more():
    sent: list[bytes] = []
    gate = SwitchoverAckGate(lambda: False)
    assert not gate.feed(ACK + SHUT, lambda b: sent.append(bytes(b)))
    assert sent == [] and not gate.passed
