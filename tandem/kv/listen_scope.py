"""Holds the UCX listener to the interface of the address the receiver advertises (--kv-host).

ucxx cannot bind a listener to one address: `create_listener` takes a port only, and its C++
`Listener` resolves `getaddrinfo(NULL, port)` with AI_PASSIVE, i.e. the wildcard (rapidsai/ucxx,
cpp/src/listener.cpp; `Listener.ip` reports 0.0.0.0). No UCX setting moves the connection
manager's listening address either: UCX_NET_DEVICES restricts the transports' own sockets, which
already bind the devices' addresses, not this one. The closest real confinement is the kernel's:
SO_BINDTODEVICE on the listening socket, set right after UCX creates it and before the address is
published. Connections that arrive for an address of any other interface are then refused, so a
receiver on 127.0.0.1 cannot be reached from outside the host. (An RDMA connection manager listens
through rdma_cm, not a TCP socket; it is not covered here.)
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

import psutil

from tandem.kv.transport import KVTransportUnavailable

logger = logging.getLogger("tandem.kv.listen_scope")

_LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp


def interface_of(host: str) -> str | None:
    """The interface that holds `host` (None for a wildcard host); raises if no interface does."""
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    wanted = {ipaddress.ip_address(address.split("%")[0]) for address in addresses}
    if any(address.is_unspecified for address in wanted):
        return None
    interfaces = psutil.net_if_addrs()
    for name, entries in interfaces.items():
        held = {ipaddress.ip_address(entry.address.split("%")[0]) for entry in entries
                if entry.family in (socket.AF_INET, socket.AF_INET6)}
        # Every 127.0.0.0/8 address is local to the loopback interface, not only 127.0.0.1.
        if wanted & held or (all(a.is_loopback for a in wanted) and any(a.is_loopback for a in held)):
            return name
    raise KVTransportUnavailable(
        f"--kv-host {host} is not an address of this host (interfaces: {', '.join(sorted(interfaces))}); "
        "give an address of one of them, or 0.0.0.0 to accept KV connections on all")


def confine_listener(port: int, host: str) -> None:
    """Holds this process's TCP listening sockets on `port` to the interface of `host`."""
    interface = interface_of(host)
    if interface is None:
        return
    descriptors = _listening_descriptors(port)
    if not descriptors:
        raise KVTransportUnavailable(
            f"found no TCP listening socket of this process on KV port {port} to hold to {interface} "
            "(is UCX's TCP connection manager disabled by UCX_SOCKADDR_TLS_PRIORITY?)")
    for descriptor in descriptors:
        with socket.socket(fileno=os.dup(descriptor)) as listener:  # closing the copy leaves UCX's open
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            except OSError as error:
                raise KVTransportUnavailable(
                    f"could not hold the KV listener on port {port} to interface {interface}: {error} "
                    "(SO_BINDTODEVICE needs Linux 5.7 or later, or CAP_NET_RAW)") from error
    logger.info("KV listener on port %d accepts connections on interface %s only", port, interface)


def _listening_descriptors(port: int) -> list[int]:
    """File descriptors of this process's TCP sockets listening on `port` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == _LISTEN_STATE and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            found.append(int(name))
    return found
