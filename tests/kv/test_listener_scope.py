"""A KV receiver started on 127.0.0.1 accepts connections at that address only.

The receiver runs in its own process (tests/kv/peers.py) with UCX over TCP on loopback; the test
inspects that process's listening sockets from outside and connects to them as any host would.
"""

from __future__ import annotations

import shutil
import socket
import subprocess

import psutil
import pytest

from tandem.kv.listen_scope import interface_of
from tandem.kv.transport import KVTransportUnavailable
from tests.kv.peers import start_receiver

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def receiver():
    """A receiver process listening for KV on 127.0.0.1, and its port."""
    peer, address = start_receiver()
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1"
    yield peer, int(port)
    peer.stop()


def _other_ipv4_addresses() -> list[str]:
    return [entry.address for entries in psutil.net_if_addrs().values() for entry in entries
            if entry.family == socket.AF_INET and not entry.address.startswith("127.")]


def _connect(host: str, port: int) -> str:
    with socket.socket() as probe:
        probe.settimeout(5)
        try:
            probe.connect((host, port))
        except OSError as error:
            return type(error).__name__
        return "connected"


def test_the_kv_port_refuses_connections_to_any_other_address_of_the_host(receiver):
    _, port = receiver
    others = _other_ipv4_addresses()
    if not others:
        pytest.skip("this host has no IPv4 address besides loopback to connect through")
    assert _connect("127.0.0.1", port) == "connected"
    assert {address: _connect(address, port) for address in others} == {
        address: "ConnectionRefusedError" for address in others}


def test_every_listening_socket_of_the_receiver_is_held_to_loopback(receiver):
    peer, port = receiver
    if shutil.which("ss") is None:
        pytest.skip("`ss` (iproute2) is not installed: it alone shows a socket's bound device")
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True,
                           timeout=30).stdout.splitlines()
    local = [line.split()[3] for line in lines if f"pid={peer.process.pid}," in line]
    assert any(address.endswith(f":{port}") for address in local), lines
    # Each is bound to 127.0.0.1 itself, or is a wildcard socket the kernel holds to `lo` ("%lo").
    assert [a for a in local if not (a.startswith("127.0.0.1:") or "%lo:" in a)] == [], local


def test_the_interface_of_an_address_is_found_and_a_foreign_address_refused():
    assert interface_of("0.0.0.0") is None
    loopback = interface_of("127.0.0.1")
    assert loopback in psutil.net_if_addrs()
    assert any(entry.address == "127.0.0.1" for entry in psutil.net_if_addrs()[loopback])
    with pytest.raises(KVTransportUnavailable, match="192.0.2.201 is not an address of this host"):
        interface_of("192.0.2.201")
