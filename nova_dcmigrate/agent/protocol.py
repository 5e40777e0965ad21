"""Authenticated framing between agents.

Why: pages of a guest must only flow between the agents of that guest's
migration.  Each connection starts with a mutual challenge/response proof of
the per-migration secret (HMAC-SHA256, fresh nonces on both sides), which
also derives one key per direction.  Every frame after that carries a
truncated HMAC over an implicit sequence number, so frames cannot be forged,
replayed, reordered or dropped without the receiver noticing.

Frame MACs: HMAC-SHA256 up to version 3; from version 4 keyed BLAKE3
(about four times cheaper per byte, which is most of a destination agent's
CPU at 10 Gbit/s), keyed per direction by a key derived from that
direction's HMAC key.  Both are truncated to 16 bytes.  An agent of the
previous release offers only version 3 and so keeps HMAC-SHA256.

Over TLS (``[dcmigrate_agent] peer_tls``) the same handshake runs inside
the TLS session (the secret still binds the connection to one migration)
and frames carry no MAC: TLS already authenticates every record.

Versions: the connector offers a range.  The HELLO's version byte is the
*lowest* version it speaks (so an agent of the release before range
negotiation, which accepts exactly its own version, still accepts it) and
the high byte of the former reserved field the highest (0: the same).  The
acceptor picks the highest common version and proves it in CHALLENGE: for
the lowest offered version the proof is unchanged, for a higher one the
chosen version is appended to the MAC input, so the connector learns it
from the one proof that verifies and nobody can downgrade it.

Wire format (all integers big-endian)::

    HELLO      connector -> acceptor   60 bytes
               "DCMG" u8 min_version u8 channel u8 max_version u8 0
               uuid[16] u32 attempt nonce[32]
    CHALLENGE  acceptor -> connector   nonce[32] mac[32]
    RESPONSE   connector -> acceptor   mac[32]
    frames     u8 type u8 flags u16 0 u32 length  payload[length]  mac[16]
               (no mac over TLS)
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import socket
import ssl
import struct
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import blake3

from nova_dcmigrate.agent import exception

MAGIC = b"DCMG"
#: 2: the source confirms every FRONTIER (frontier raises).
#: 3: SKIP frames (holders skip pages the source sent itself).
#: 4: frame MACs are keyed BLAKE3 instead of HMAC-SHA256.
VERSION = 4
#: Oldest version this release still speaks (a rolling upgrade mixes
#: agents of two adjacent releases).
MIN_VERSION = 3
#: Newest version this release speaks.
MAX_VERSION = VERSION
#: First version whose frame MAC is keyed BLAKE3.
BLAKE3_VERSION = 4
NONCE_LEN = 32
MAC_LEN = 16
MAX_PAYLOAD = 8 * 1024 * 1024

_HELLO = struct.Struct(">4sBBBB16sI32s")
_FRAME = struct.Struct(">BBHI")
_SEQ = struct.Struct(">Q")
HELLO_LEN = _HELLO.size
FRAME_HEADER_LEN = _FRAME.size


class Channel(enum.IntEnum):
    """What a connection carries; fixed by the connector's HELLO."""

    STREAM = 1      # source agent -> destination agent: the migration stream
    RELAY = 2       # new destination agent -> a holder: pull stored pages


class FrameType(enum.IntEnum):
    DATA = 1          # forward migration stream bytes
    DATA_EOF = 2      # the source QEMU closed its side of the stream
    RETURN = 3        # return-path bytes (destination QEMU -> source QEMU)
    RETURN_EOF = 4    # the destination QEMU closed the return path
    ACK = 5           # destination stored the stream up to an offset
    ABORT = 6         # the sender gives up; payload: UTF-8 reason
    READY = 7         # destination QEMU connected, stream may start
    # Redirect (stream channel): new destination <-> source.
    LAYOUT = 8        # JSON block layout of the held pages
    EXPECTED = 9      # per page: who holds it for the destination + digest
    PROGRESS = 10     # source -> destination: first-pass position
    # destination -> source: send held pages below this; source ->
    # destination: the frontier it applied (protocol version 2).
    FRONTIER = 11
    # Relay channel: holder <-> new destination.
    INVENTORY = 12    # holder's pages: state, attempt, digest
    INVENTORY_END = 13
    ASSIGN = 14       # which held pages this holder must relay
    ASSIGN_END = 15
    RELAY_PAGES = 16  # a batch of relayed pages
    STOP_AT = 17      # do not relay below this page (yet)
    FINAL = 18        # last stop + explicit pages still missing below it
    RELAY_DONE = 19   # holder has sent everything asked
    # new destination -> holder: pages the source sent itself, do not
    # relay them (protocol version 3).
    SKIP = 20


ACK = struct.Struct(">QQQ")   # stream offset, pages held, zero pages held


@dataclass(frozen=True)
class Hello:
    channel: Channel
    migration_id: str
    attempt: int
    nonce: bytes
    raw: bytes
    min_version: int = MIN_VERSION
    max_version: int = MAX_VERSION

    @classmethod
    def make(cls, channel: Channel, migration_id: str, attempt: int,
             versions: tuple[int, int] | None = None) -> Hello:
        lo, hi = versions or (MIN_VERSION, MAX_VERSION)
        nonce = os.urandom(NONCE_LEN)
        raw = _HELLO.pack(MAGIC, lo, int(channel), hi if hi != lo else 0,
                          0, uuid.UUID(migration_id).bytes, attempt, nonce)
        return cls(channel, migration_id, attempt, nonce, raw, lo, hi)

    @classmethod
    def parse(cls, raw: bytes, peer: str) -> Hello:
        magic, lo, channel, hi, _r, mid, attempt, nonce = \
            _HELLO.unpack(raw)
        if magic != MAGIC:
            raise exception.PeerProtocolError(
                peer=peer, reason="bad magic %r in HELLO" % magic)
        hi = hi or lo
        if hi < lo:
            raise exception.PeerProtocolError(
                peer=peer, reason="bad version range %d-%d" % (lo, hi))
        try:
            chan = Channel(channel)
        except ValueError:
            raise exception.PeerProtocolError(
                peer=peer, reason="unknown channel %d" % channel) from None
        return cls(chan, str(uuid.UUID(bytes=mid)), attempt, nonce, raw,
                   lo, hi)


def negotiate(hello: Hello, peer: str,
              versions: tuple[int, int] | None = None) -> int:
    """The highest version both sides speak.

    :raises VersionMismatch: the ranges do not overlap.
    """
    lo, hi = versions or (MIN_VERSION, MAX_VERSION)
    best = min(hi, hello.max_version)
    if best < max(lo, hello.min_version):
        raise exception.VersionMismatch(
            peer=peer, theirs="%d-%d" % (hello.min_version,
                                         hello.max_version),
            ours="%d-%d" % (lo, hi))
    return best


def _version_tag(hello: Hello, version: int) -> bytes:
    """What a chosen version adds to the acceptor's proof."""
    return b"" if version == hello.min_version else bytes([version])


def _mac(key: bytes, *parts: bytes | bytearray | memoryview) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        h.update(p)
    return h.digest()


Buffer = bytes | bytearray | memoryview


def frame_key(key: bytes, version: int) -> bytes:
    """The frame MAC key of one direction for a protocol version."""
    if version >= BLAKE3_VERSION:
        # A key of its own for the other MAC function.
        return _mac(key, b"dcmigrate-frame-blake3")
    return key


def frame_mac(key: bytes, version: int, seq: int, header: Buffer,
              payload: Buffer) -> bytes:
    """MAC of frame number ``seq`` (truncated to :data:`MAC_LEN`).

    :param key: from :func:`frame_key` for the same version.
    """
    if version >= BLAKE3_VERSION:
        h = blake3.blake3(_SEQ.pack(seq), key=key)
        h.update(header)
        h.update(payload)
        return h.digest(MAC_LEN)
    return _mac(key, _SEQ.pack(seq), header, payload)[:MAC_LEN]


def _keys(secret: bytes, hello: bytes, nonce_a: bytes) -> tuple[bytes, bytes]:
    base = _mac(secret, b"dcmigrate-keys", hello, nonce_a)
    return (_mac(base, b"connector->acceptor"),
            _mac(base, b"acceptor->connector"))


def recv_exact(sock: socket.socket, n: int, peer: str) -> bytes:
    buf = bytearray(n)
    recv_exact_into(sock, memoryview(buf), peer)
    return bytes(buf)


def recv_exact_into(sock: socket.socket, view: memoryview, peer: str) -> None:
    got, n = 0, len(view)
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except socket.timeout as err:
            raise exception.PeerProtocolError(
                peer=peer, reason="timed out") from err
        except OSError as err:
            raise exception.PeerClosed(peer=peer, reason=str(err)) from err
        if k == 0:
            raise exception.PeerClosed(
                peer=peer, reason="end of stream after %d of %d bytes"
                % (got, n))
        got += k


class FramedConnection:
    """One authenticated, framed agent-to-agent connection.

    Sending is thread-safe (one lock); receiving must happen in one thread.
    """

    def __init__(self, sock: socket.socket, peer: str, send_key: bytes,
                 recv_key: bytes, hello: Hello, version: int = VERSION
                 ) -> None:
        self.sock = sock
        self.peer = peer
        self.hello = hello
        #: The negotiated protocol version.
        self.version = version
        #: TLS authenticates every record: no per-frame MAC then.
        self.tls = isinstance(sock, ssl.SSLSocket)
        #: e.g. "TLSv1.3", None without TLS.
        self.tls_version = sock.version() if isinstance(
            sock, ssl.SSLSocket) else None
        self.mac_len = 0 if self.tls else MAC_LEN
        self._send_key = frame_key(send_key, version)
        self._recv_key = frame_key(recv_key, version)
        self._send_seq = 0
        self._recv_seq = 0
        self._send_lock = threading.Lock()
        self._hdr = bytearray(FRAME_HEADER_LEN)
        self._mac = bytearray(MAC_LEN)
        self._scratch = bytearray(256 * 1024)
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- sending ---------------------------------------------------------
    def send(self, ftype: FrameType,
             payload: bytes | bytearray | memoryview = b"") -> None:
        n = len(payload)
        if n > MAX_PAYLOAD:
            raise ValueError("frame payload too large: %d" % n)
        header = _FRAME.pack(int(ftype), 0, 0, n)
        with self._send_lock:
            if self.tls:
                parts: tuple[bytes | bytearray | memoryview, ...] = (
                    header, payload)
            else:
                mac = frame_mac(self._send_key, self.version,
                                self._send_seq, header, payload)
                parts = (header, payload, mac)
            self._send_seq += 1
            try:
                self._sendall_parts(parts)
            except OSError as err:
                raise exception.PeerClosed(peer=self.peer,
                                           reason=str(err)) from err
            self.bytes_sent += n + FRAME_HEADER_LEN + self.mac_len

    def _sendall_parts(self, parts: tuple[bytes | bytearray | memoryview, ...]
                       ) -> None:
        if self.tls:
            # SSLSocket has no sendmsg; one record per frame is cheaper
            # than one per part anyway.
            self.sock.sendall(b"".join(parts))
            return
        total = sum(len(p) for p in parts)
        sent = self.sock.sendmsg(parts)
        if sent == total:
            return
        # Partial scatter-gather send (signal, huge payload): finish slowly.
        rest = b"".join(bytes(p) for p in parts)[sent:]
        self.sock.sendall(rest)

    # -- receiving -------------------------------------------------------
    def recv(self, into: Callable[[int], memoryview] | None = None
             ) -> tuple[FrameType, memoryview]:
        """Receive and authenticate one frame.

        :param into: called with the payload length, returns a writable
            buffer of at least that size; the payload is received directly
            there (zero copy into a stream reader).  Without it the payload
            lands in an internal buffer valid until the next ``recv``.
        :raises PeerProtocolError: bad MAC, type or length; the connection
            must then be dropped.
        """
        hview = memoryview(self._hdr)
        recv_exact_into(self.sock, hview, self.peer)
        ftype_raw, _flags, _r, n = _FRAME.unpack_from(self._hdr)
        if n > MAX_PAYLOAD:
            raise exception.PeerProtocolError(
                peer=self.peer, reason="frame length %d exceeds %d"
                % (n, MAX_PAYLOAD))
        if into is not None and ftype_raw == FrameType.DATA:
            target = into(n)[:n]
        else:
            if len(self._scratch) < n:
                self._scratch = bytearray(n)
            target = memoryview(self._scratch)[:n]
        recv_exact_into(self.sock, target, self.peer)
        if not self.tls:
            recv_exact_into(self.sock, memoryview(self._mac), self.peer)
            expect = frame_mac(self._recv_key, self.version,
                               self._recv_seq, self._hdr, target)
            if not hmac.compare_digest(expect, self._mac):
                raise exception.PeerAuthError(
                    peer=self.peer, reason="bad frame MAC at frame %d"
                    % self._recv_seq)
        self._recv_seq += 1
        self.bytes_received += n + FRAME_HEADER_LEN + self.mac_len
        try:
            ftype = FrameType(ftype_raw)
        except ValueError:
            raise exception.PeerProtocolError(
                peer=self.peer, reason="unknown frame type %d" % ftype_raw
            ) from None
        return ftype, target

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def connect(sock: socket.socket, peer: str, secret: bytes, channel: Channel,
            migration_id: str, attempt: int,
            versions: tuple[int, int] | None = None) -> FramedConnection:
    """Run the connector side of the handshake on a connected socket.

    :param versions: (lowest, highest) protocol version offered; default
        this release's range.
    :raises PeerAuthError: the acceptor does not know the secret.
    :raises PeerProtocolError, PeerClosed: the acceptor dropped us (unknown
        migration, wrong secret or no common version on its side) or
        spoke garbage.
    """
    hello = Hello.make(channel, migration_id, attempt, versions)
    try:
        sock.sendall(hello.raw)
    except OSError as err:
        raise exception.PeerClosed(peer=peer, reason=str(err)) from err
    challenge = recv_exact(sock, NONCE_LEN + 32, peer)
    nonce_a, mac_a = challenge[:NONCE_LEN], challenge[NONCE_LEN:]
    for version in range(hello.max_version, hello.min_version - 1, -1):
        expect = _mac(secret, b"dcmigrate-acceptor", hello.raw, nonce_a,
                      _version_tag(hello, version))
        if hmac.compare_digest(expect, mac_a):
            break
    else:
        raise exception.PeerAuthError(
            peer=peer, reason="acceptor does not prove the migration secret")
    try:
        sock.sendall(_mac(secret, b"dcmigrate-connector", hello.raw,
                          nonce_a))
    except OSError as err:
        raise exception.PeerClosed(peer=peer, reason=str(err)) from err
    c2a, a2c = _keys(secret, hello.raw, nonce_a)
    return FramedConnection(sock, peer, c2a, a2c, hello, version)


def read_hello(sock: socket.socket, peer: str) -> Hello:
    """Acceptor, step 1: read the unauthenticated HELLO."""
    return Hello.parse(recv_exact(sock, HELLO_LEN, peer), peer)


def accept(sock: socket.socket, peer: str, hello: Hello,
           secret: bytes, versions: tuple[int, int] | None = None
           ) -> FramedConnection:
    """Acceptor, step 2: pick the version, prove our secret, check the
    connector's proof.

    :raises VersionMismatch: no common protocol version.
    :raises PeerAuthError: wrong secret; the caller drops the connection.
    """
    version = negotiate(hello, peer, versions)
    nonce_a = os.urandom(NONCE_LEN)
    sock.sendall(nonce_a + _mac(secret, b"dcmigrate-acceptor", hello.raw,
                                nonce_a, _version_tag(hello, version)))
    mac_c = recv_exact(sock, 32, peer)
    expect = _mac(secret, b"dcmigrate-connector", hello.raw, nonce_a)
    if not hmac.compare_digest(expect, mac_c):
        raise exception.PeerAuthError(
            peer=peer, reason="connector does not prove the migration secret")
    c2a, a2c = _keys(secret, hello.raw, nonce_a)
    return FramedConnection(sock, peer, a2c, c2a, hello, version)
