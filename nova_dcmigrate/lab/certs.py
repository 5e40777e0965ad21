"""A throw-away CA and per-host certificates for agent TLS in the lab.

Made with the ``openssl`` command line tool (Debian package ``openssl``),
like an operator would for libvirt's migration TLS: one CA, and per host
a key and a certificate whose subjectAltName names the host's address and
name, usable as server and as client (mutual TLS).
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

from nova_dcmigrate.lab.exception import LabError

CURVE = "prime256v1"
DAYS = "2"


@dataclasses.dataclass(frozen=True)
class HostCert:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def conf_lines(self) -> str:
        """``[dcmigrate_agent]`` options using these files."""
        return ("peer_tls = true\n"
                "peer_tls_ca_file = %s\n"
                "peer_tls_cert_file = %s\n"
                "peer_tls_key_file = %s\n"
                % (self.ca_file, self.cert_file, self.key_file))


def _openssl(*args: str) -> None:
    try:
        subprocess.run(("openssl",) + args, check=True,
                       capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        raise LabError("openssl %s failed: %s %s"
                       % (args[0], err, detail.decode(errors="replace")))


class LabCA:
    """A CA in ``directory`` (created); :meth:`issue` signs host certs."""

    def __init__(self, directory: Path, name: str = "dcmigrate-lab-ca"
                 ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.cert = self.dir / "ca-cert.pem"
        self.key = self.dir / "ca-key.pem"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:" + CURVE, "-nodes",
                 "-keyout", str(self.key), "-out", str(self.cert),
                 "-days", DAYS, "-subj", "/CN=" + name,
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def issue(self, name: str, addresses: list[str],
              dns: list[str] | None = None) -> HostCert:
        """Key + certificate for host ``name`` (SAN: IPs and names)."""
        key = self.dir / ("%s-key.pem" % name)
        csr = self.dir / ("%s.csr" % name)
        cert = self.dir / ("%s-cert.pem" % name)
        ext = self.dir / ("%s.ext" % name)
        san = ["IP:%s" % a for a in addresses] + \
            ["DNS:%s" % d for d in (dns or [name])]
        ext.write_text("subjectAltName=%s\n"
                       "basicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\n"
                       "extendedKeyUsage=serverAuth,clientAuth\n"
                       % ",".join(san))
        _openssl("req", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:" + CURVE, "-nodes",
                 "-keyout", str(key), "-out", str(csr),
                 "-subj", "/CN=" + name)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert),
                 "-CAkey", str(self.key), "-CAcreateserial",
                 "-out", str(cert), "-days", DAYS, "-extfile", str(ext))
        key.chmod(0o600)
        return HostCert(self.cert, cert, key)
