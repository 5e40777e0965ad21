"""Mutual TLS 1.3 for agent-to-agent connections (stdlib ``ssl``).

Why: without it the frames are authenticated but guest memory crosses the
migration network in clear.  Certificates are configured like libvirt's
migration TLS: one CA that signs every host's certificate; both ends
present a certificate and verify the other's (a connector also checks the
acceptor's name against the address it dialled).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from oslo_log import log as logging

from nova_dcmigrate.agent import exception

LOG = logging.getLogger(__name__)


class PeerTLS:
    """The two TLS contexts of one agent, or nothing when TLS is off."""

    def __init__(self, server: ssl.SSLContext | None,
                 client: ssl.SSLContext | None) -> None:
        self.server = server
        self.client = client

    @property
    def enabled(self) -> bool:
        return self.server is not None

    @classmethod
    def from_conf(cls, conf: Any) -> PeerTLS:
        """Contexts from ``[dcmigrate_agent] peer_tls*``.

        :raises TLSConfigError: a file is missing or does not load.
        """
        if not conf.peer_tls:
            return cls(None, None)
        return cls(_context(conf, ssl.Purpose.CLIENT_AUTH),
                   _context(conf, ssl.Purpose.SERVER_AUTH))

    def wrap_server(self, sock: socket.socket) -> socket.socket:
        """Server side handshake (blocking, honours the socket timeout).

        :raises PeerAuthError: the peer has no valid certificate.
        """
        if self.server is None:
            return sock
        try:
            return self.server.wrap_socket(sock, server_side=True)
        except ssl.SSLError as err:
            raise exception.PeerAuthError(
                peer=_peer(sock), reason="TLS: %s" % err) from err

    def wrap_client(self, sock: socket.socket, address: str) -> socket.socket:
        """Client side handshake, checking the peer's name is ``address``.

        :raises PeerAuthError: the peer's certificate does not verify.
        """
        if self.client is None:
            return sock
        try:
            return self.client.wrap_socket(sock, server_hostname=address)
        except ssl.SSLError as err:
            raise exception.PeerAuthError(
                peer=address, reason="TLS: %s" % err) from err


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return "%s:%d" % (host, port)
    except OSError:
        return "?"


def _context(conf: Any, purpose: ssl.Purpose) -> ssl.SSLContext:
    server = purpose == ssl.Purpose.CLIENT_AUTH
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server
                         else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = not server
    try:
        ctx.load_verify_locations(cafile=conf.peer_tls_ca_file)
        ctx.load_cert_chain(conf.peer_tls_cert_file, conf.peer_tls_key_file)
    except (OSError, ssl.SSLError) as err:
        raise exception.TLSConfigError(
            reason="%s (ca %s, cert %s, key %s)"
            % (err, conf.peer_tls_ca_file, conf.peer_tls_cert_file,
               conf.peer_tls_key_file)) from err
    return ctx
