"""The API server's TLS identity: a throwaway CA and a serving certificate for the bridge address.

Pods reach the API the way in-cluster clients do (`KUBERNETES_SERVICE_HOST`/`PORT`, the service
account's token and `ca.crt`), and in-cluster configuration always speaks HTTPS.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True, frozen=True)
class ServingCert:
    """Files of a CA and of a server certificate signed by it."""

    ca_cert: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """An SSL context that serves this certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]}: {done.stderr.strip()}")


def make_serving_cert(folder: Path, addresses: list[str]) -> ServingCert:
    """A CA and a certificate valid for these IP addresses (and the name `kubernetes.default`)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = folder / "ca.key", folder / "ca.crt"
    key, csr, cert = folder / "apiserver.key", folder / "apiserver.csr", folder / "apiserver.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=tandem-test-ca",
             "-keyout", str(ca_key), "-out", str(ca_cert))
    names = ",".join([f"IP:{address}" for address in addresses]
                     + ["DNS:kubernetes.default", "DNS:kubernetes.default.svc"])
    extensions = folder / "san.cnf"
    extensions.write_text(f"subjectAltName={names}\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", "/CN=kube-apiserver", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(cert))
    return ServingCert(ca_cert, cert, key)
