"""A read-only stand-in for neutron-server (``cloud --neutron-stub``).

Why: Nova calls Neutron on every server show, boot and live migration even
for servers without ports (``--nic none``), and only ever with GETs for
them (measured, doc/source/lab-cloud.rst).  This answers those GETs with
empty lists and refuses every write with 404, so a test that needs real
networking fails loudly instead of passing on a fake.
"""

from __future__ import annotations

import http.server
import json
import sys
from urllib import parse

_EMPTY = {"ports", "networks", "subnets", "security-groups",
          "security_groups", "floatingips", "routers", "trunks",
          "security-group-rules", "subnetpools", "qos", "segments"}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        path = parse.urlparse(self.path).path.rstrip("/")
        parts = [p for p in path.split("/") if p]
        if not parts:
            self._send(200, {"versions": [{
                "id": "v2.0", "status": "CURRENT",
                "links": [{"rel": "self",
                           "href": f"http://{self.headers['Host']}/v2.0/"}]}]})
            return
        if parts[0] == "v2.0":
            parts = parts[1:]
        if not parts:
            self._send(200, {"resources": []})
        elif parts[0] == "extensions":
            self._send(200, {"extensions": []})
        elif parts[0] == "quotas":
            self._send(200, {"quota": {"port": -1, "network": -1,
                                       "subnet": -1, "security_group": -1,
                                       "floatingip": -1}})
        elif len(parts) == 1 and parts[0] in _EMPTY:
            self._send(200, {parts[0].replace("-", "_"): []})
        else:
            self._not_found()

    def _not_found(self) -> None:
        self._send(404, {"NeutronError": {
            "type": "NotSupported",
            "message": "read-only Neutron stand-in of the lab cloud",
            "detail": ""}})

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_found

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write("%s %s\n" % (self.command, self.path))


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    server = http.server.ThreadingHTTPServer((host, port), _Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
