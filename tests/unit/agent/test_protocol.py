"""Agent-to-agent handshake and framing over real loopback sockets."""

from __future__ import annotations

import socket
import threading
import uuid

import pytest

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent.protocol import FrameType

SECRET = b"s" * 32
MID = str(uuid.uuid4())


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    return a, b


def _handshake(conn_secret: bytes, acc_secret: bytes):
    c, a = _pair()
    result: dict = {}

    def acceptor():
        try:
            hello = protocol.read_hello(a, "peer-c")
            result["hello"] = hello
            result["acc"] = protocol.accept(a, "peer-c", hello, acc_secret)
        except Exception as err:  # recorded for the assertions
            result["acc_err"] = err
            a.close()

    t = threading.Thread(target=acceptor)
    t.start()
    try:
        result["con"] = protocol.connect(c, "peer-a", conn_secret,
                                         protocol.Channel.STREAM, MID, 3)
    except Exception as err:
        result["con_err"] = err
        c.close()
    t.join(5)
    return result


def test_handshake_and_frames_both_ways():
    r = _handshake(SECRET, SECRET)
    con, acc = r["con"], r["acc"]
    assert r["hello"].migration_id == MID
    assert r["hello"].attempt == 3
    con.send(FrameType.DATA, b"hello world")
    ftype, payload = acc.recv()
    assert ftype == FrameType.DATA and bytes(payload) == b"hello world"
    acc.send(FrameType.RETURN, b"x" * 100000)
    ftype, payload = con.recv()
    assert ftype == FrameType.RETURN and bytes(payload) == b"x" * 100000
    # zero-copy receive into a caller buffer
    con.send(FrameType.DATA, b"abc")
    buf = bytearray(10)
    ftype, payload = acc.recv(into=lambda n: memoryview(buf))
    assert bytes(buf[:3]) == b"abc" and len(payload) == 3


def test_wrong_secret_rejected_by_both_sides():
    r = _handshake(SECRET, b"t" * 32)
    # The connector sees the acceptor cannot prove the secret.
    assert isinstance(r["con_err"], exception.PeerAuthError)


def test_connector_with_wrong_secret_rejected_by_acceptor():
    c, a = _pair()
    errs = {}

    def acceptor():
        try:
            hello = protocol.read_hello(a, "c")
            protocol.accept(a, "c", hello, SECRET)
        except Exception as err:
            errs["acc"] = err

    t = threading.Thread(target=acceptor)
    t.start()
    # A forged connector: sends HELLO, then a bogus response.
    hello = protocol.Hello.make(protocol.Channel.STREAM, MID, 0)
    c.sendall(hello.raw)
    protocol.recv_exact(c, 64, "a")
    c.sendall(b"\0" * 32)
    t.join(5)
    assert isinstance(errs["acc"], exception.PeerAuthError)
    assert "does not prove" in str(errs["acc"])


def test_tampered_frame_detected():
    c, a = _pair()
    r: dict = {}

    def acceptor():
        hello = protocol.read_hello(a, "c")
        r["acc"] = protocol.accept(a, "c", hello, SECRET)

    t = threading.Thread(target=acceptor)
    t.start()
    con = protocol.connect(c, "a", SECRET, protocol.Channel.STREAM, MID, 0)
    t.join(5)
    # Forge a frame without the key: header + payload + zero MAC.
    c.sendall(bytes([FrameType.DATA, 0, 0, 0, 0, 0, 0, 2]) + b"hi"
              + b"\0" * 16)
    with pytest.raises(exception.PeerAuthError, match="bad frame MAC"):
        r["acc"].recv()
    del con


def test_replayed_frame_detected():
    c, a = _pair()
    r: dict = {}

    def acceptor():
        hello = protocol.read_hello(a, "c")
        r["acc"] = protocol.accept(a, "c", hello, SECRET)

    t = threading.Thread(target=acceptor)
    t.start()
    con = protocol.connect(c, "a", SECRET, protocol.Channel.STREAM, MID, 0)
    t.join(5)
    # Capture the bytes of one frame by sending it through a socketpair.
    x, y = socket.socketpair()
    con.sock, real = x, con.sock
    con.send(FrameType.DATA, b"once")
    frame = y.recv(100)
    con.sock = real
    real.sendall(frame)
    real.sendall(frame)   # replay: same MAC, but the sequence moved on
    ftype, payload = r["acc"].recv()
    assert bytes(payload) == b"once"
    with pytest.raises(exception.PeerAuthError):
        r["acc"].recv()


def test_oversized_frame_rejected_before_reading_payload():
    c, a = _pair()
    r: dict = {}

    def acceptor():
        hello = protocol.read_hello(a, "c")
        r["acc"] = protocol.accept(a, "c", hello, SECRET)

    t = threading.Thread(target=acceptor)
    t.start()
    protocol.connect(c, "a", SECRET, protocol.Channel.STREAM, MID, 0)
    t.join(5)
    c.sendall(bytes([1, 0, 0, 0]) + (0xFFFFFFFF).to_bytes(4, "big"))
    with pytest.raises(exception.PeerProtocolError, match="exceeds"):
        r["acc"].recv()


@pytest.mark.parametrize("raw,msg", [
    (b"XXXX" + bytes(56), "bad magic"),
    (b"DCMG\x03\x63" + bytes(54), "unknown channel 99"),
    (b"DCMG\x05\x01\x04" + bytes(53), "bad version range 5-4"),
])
def test_bad_hello(raw, msg):
    with pytest.raises(exception.PeerProtocolError, match=msg):
        protocol.Hello.parse(raw, "p")


def test_truncated_hello_is_peer_closed():
    c, a = _pair()
    c.sendall(b"DCMG")
    c.close()
    with pytest.raises(exception.PeerClosed, match="4 of 60"):
        protocol.read_hello(a, "p")


# -- version range negotiation ------------------------------------------------
def _negotiated(con_range, acc_range):
    c, a = _pair()
    r: dict = {}

    def acceptor():
        try:
            hello = protocol.read_hello(a, "c")
            r["acc"] = protocol.accept(a, "c", hello, SECRET, acc_range)
        except Exception as err:  # recorded for the assertions
            r["acc_err"] = err
            a.close()

    t = threading.Thread(target=acceptor)
    t.start()
    try:
        r["con"] = protocol.connect(c, "a", SECRET, protocol.Channel.STREAM,
                                    MID, 0, con_range)
    except Exception as err:
        r["con_err"] = err
        c.close()
    t.join(5)
    return r


@pytest.mark.parametrize("con,acc,expect", [
    ((3, 3), (3, 3), 3),        # same release
    ((3, 4), (3, 3), 3),        # new connector, previous-release acceptor
    ((3, 3), (3, 4), 3),        # previous-release connector, new acceptor
    ((3, 5), (4, 6), 5),        # highest common version wins
    ((4, 4), (3, 5), 4),
])
def test_version_ranges_overlap(con, acc, expect):
    r = _negotiated(con, acc)
    assert r["con"].version == expect == r["acc"].version
    # Frames flow and are authenticated with the negotiated keys.
    r["con"].send(FrameType.DATA, b"v")
    assert bytes(r["acc"].recv()[1]) == b"v"


@pytest.mark.parametrize("con,acc", [((3, 3), (4, 5)), ((5, 6), (3, 4))])
def test_version_ranges_without_overlap_refused(con, acc):
    r = _negotiated(con, acc)
    err = r["acc_err"]
    assert isinstance(err, exception.VersionMismatch)
    assert err.kwargs["theirs"] == "%d-%d" % con
    assert err.kwargs["ours"] == "%d-%d" % acc
    # The connector sees the acceptor hang up, never a session.
    assert isinstance(r["con_err"], exception.PeerClosed)


def test_previous_release_hello_is_byte_compatible():
    """A single-version HELLO (min == max) is the 3.x wire format: the
    former reserved field stays zero, which the release before range
    negotiation required."""
    hello = protocol.Hello.make(protocol.Channel.STREAM, MID, 1, (3, 3))
    assert hello.raw[4:8] == bytes([3, 1, 0, 0])
    parsed = protocol.Hello.parse(hello.raw, "p")
    assert (parsed.min_version, parsed.max_version) == (3, 3)


def test_acceptor_cannot_be_downgraded_by_a_forged_choice():
    """The chosen version is inside the acceptor's MAC: a proof made for
    another version does not verify."""
    c, a = _pair()

    def acceptor():
        hello = protocol.read_hello(a, "c")
        nonce = b"n" * protocol.NONCE_LEN
        # Proof for version 4 while the connector offered 3-5 and the
        # real acceptor would say 5: the connector accepts 4 only if the
        # secret holder said 4 -- here a forger without the secret.
        a.sendall(nonce + protocol._mac(b"wrong" * 8, b"dcmigrate-acceptor",
                                        hello.raw, nonce, bytes([4])))

    t = threading.Thread(target=acceptor)
    t.start()
    with pytest.raises(exception.PeerAuthError):
        protocol.connect(c, "a", SECRET, protocol.Channel.STREAM, MID, 0,
                         (3, 5))
    t.join(5)


def _wire_frames(version: int, payloads: list[bytes]):
    """Frames a connector sends at ``version``, captured off the wire,
    with the acceptor's connection and the connector's send key."""
    r = _negotiated((version, version), (protocol.MIN_VERSION,
                                         protocol.MAX_VERSION))
    con, acc = r["con"], r["acc"]
    assert con.version == acc.version == version
    x, y = socket.socketpair()
    con.sock, real = x, con.sock
    for p in payloads:
        con.send(FrameType.DATA, p)
    x.close()
    wire = b""
    while True:
        d = y.recv(1 << 16)
        if not d:
            break
        wire += d
    con.sock = real
    return wire, acc, con._send_key


@pytest.mark.parametrize("version", [3, 4])
def test_frame_mac_of_each_version(version):
    """Version 3 (the previous release) keeps HMAC-SHA256 frame MACs, so
    its agents still understand ours; version 4 uses keyed BLAKE3.  The
    MAC on the wire is the documented function of key, sequence number,
    header and payload."""
    import hashlib
    import hmac

    import blake3

    payloads = [b"first", b"x" * 70000, b""]
    wire, acc, key = _wire_frames(version, payloads)
    pos = 0
    for seq, p in enumerate(payloads):
        header = wire[pos:pos + protocol.FRAME_HEADER_LEN]
        body = wire[pos + 8:pos + 8 + len(p)]
        mac = wire[pos + 8 + len(p):pos + 8 + len(p) + protocol.MAC_LEN]
        assert body == p
        seq_raw = seq.to_bytes(8, "big")
        if version == 3:
            want = hmac.new(key, seq_raw + header + p,
                            hashlib.sha256).digest()[:16]
        else:
            want = blake3.blake3(seq_raw + header + p, key=key).digest(16)
        assert mac == want
        pos += 8 + len(p) + protocol.MAC_LEN
    assert pos == len(wire)
    # The receiver of that version accepts exactly these frames.
    peer = socket.socketpair()
    acc.sock = peer[0]
    peer[1].sendall(wire)
    for p in payloads:
        ftype, got = acc.recv()
        assert ftype == FrameType.DATA and bytes(got) == p


@pytest.mark.parametrize("version", [3, 4])
def test_tampered_frame_detected_in_each_version(version):
    wire, acc, _key = _wire_frames(version, [b"payload!"])
    forged = bytearray(wire)
    forged[9] ^= 1          # one bit of the payload
    peer = socket.socketpair()
    acc.sock = peer[0]
    peer[1].sendall(bytes(forged))
    with pytest.raises(exception.PeerAuthError, match="bad frame MAC"):
        acc.recv()


def test_frame_keys_differ_between_versions():
    """Version 4 does not reuse the HMAC key as the BLAKE3 key."""
    key = b"k" * 32
    assert protocol.frame_key(key, 3) == key
    k4 = protocol.frame_key(key, 4)
    assert len(k4) == 32 and k4 != key


def test_this_release_prefers_blake3_and_still_offers_hmac():
    assert protocol.MIN_VERSION == 3
    assert protocol.MAX_VERSION == protocol.BLAKE3_VERSION == 4
    r = _negotiated(None, None)
    assert r["con"].version == r["acc"].version == 4
