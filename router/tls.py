"""TLS settings shared by the router's gRPC and HTTP servers."""

from __future__ import annotations

import pathlib
import ssl
from dataclasses import dataclass

import grpc


@dataclass(slots=True, frozen=True)
class TlsConfig:
    """Server certificate and key (PEM files); a client CA file turns on mutual TLS."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def __post_init__(self) -> None:
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None and not pathlib.Path(path).is_file():
                raise ValueError(f"TlsConfig: {name} {path!r} is not a readable file")

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials for `server.add_secure_port`."""
        key = pathlib.Path(self.key_file).read_bytes()
        cert = pathlib.Path(self.cert_file).read_bytes()
        client_ca = pathlib.Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                           require_client_auth=client_ca is not None)

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side SSLContext for aiohttp."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            context.load_verify_locations(self.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def tls_from_args(cert_file: str | None, key_file: str | None, client_ca_file: str | None = None) -> TlsConfig | None:
    """TlsConfig from optional command-line values: both cert and key, or neither."""
    if not cert_file and not key_file:
        if client_ca_file:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not cert_file or not key_file:
        raise ValueError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
    return TlsConfig(cert_file, key_file, client_ca_file)
