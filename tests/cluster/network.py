"""Pod networking: a bridge that exists only for the test, and one network namespace per pod.

Each pod gets a veth pair: one end (renamed eth0) in the pod's namespace with its own address in a
private /24, the other end on the bridge, whose host-side address is where pods reach the API
server. Pods get no default route, so their traffic stays on the bridge and their own loopback.
Names carry the pytest process id, so leftovers of a crashed run (its process is gone) are found
and removed by name at the next start, and two runs at once do not touch each other's.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

NETNS_PREFIX = "tandem-e2e-"
LINK_PREFIX = "tdm"  # interface names are at most 15 characters: tdm<run><b|h><n>
SUBNETS = ipaddress.ip_network("10.213.0.0/16")


def ip(*args: str, check: bool = True) -> str:
    """Runs `ip ARGS`; raises RuntimeError with its stderr when it fails and `check` is set."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def unavailable_reason() -> str | None:
    """Why pod namespaces cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "the emulated cluster needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            return f"the emulated cluster needs the {tool!r} command"
    probe = f"{NETNS_PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    ip("netns", "del", probe, check=False)
    return None


def _run_id(pid: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        pid, rest = divmod(pid, 36)
        text = digits[rest] + text
        if not pid:
            return text


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(slots=True, frozen=True)
class PodNetwork:
    """One pod's network namespace and address."""

    netns: str
    address: str
    host_link: str


@dataclass(slots=True)
class Bridge:
    """The test's bridge and the pod namespaces on it."""

    name: str
    subnet: ipaddress.IPv4Network
    run_id: str
    pods: dict[str, PodNetwork] = field(default_factory=dict)
    _next_index: int = 2  # .1 is the host side

    @property
    def host_address(self) -> str:
        """The bridge's own address: where pods reach servers the test runs (the API server)."""
        return str(self.subnet.network_address + 1)

    @classmethod
    def create(cls) -> Bridge:
        """Removes leftovers of crashed runs, then makes a bridge on an unused private /24."""
        remove_leftovers()
        run_id = _run_id(os.getpid())
        name = f"{LINK_PREFIX}{run_id}b"
        subnet = _free_subnet()
        ip("link", "add", name, "type", "bridge")
        bridge = cls(name, subnet, run_id)
        try:
            ip("addr", "add", f"{bridge.host_address}/{subnet.prefixlen}", "dev", name)
            ip("link", "set", name, "up")
        except RuntimeError:
            bridge.close()
            raise
        return bridge

    def add_pod(self, pod_uid: str) -> PodNetwork:
        """A new namespace with eth0 on the bridge and lo up."""
        index = self._next_index
        self._next_index += 1
        if index >= self.subnet.num_addresses - 1:
            raise RuntimeError(f"no address left in {self.subnet}")
        netns = f"{NETNS_PREFIX}{os.getpid()}-{index}"
        host_link, pod_link = f"{LINK_PREFIX}{self.run_id}h{index}", f"{LINK_PREFIX}{self.run_id}p{index}"
        address = str(self.subnet.network_address + index)
        network = PodNetwork(netns, address, host_link)
        self.pods[pod_uid] = network
        ip("netns", "add", netns)
        ip("link", "add", host_link, "type", "veth", "peer", "name", pod_link)
        ip("link", "set", pod_link, "netns", netns)
        ip("-n", netns, "link", "set", pod_link, "name", "eth0")
        ip("-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "link", "set", "lo", "up")
        ip("link", "set", host_link, "master", self.name, "up")
        return network

    def remove_pod(self, pod_uid: str) -> None:
        """Deletes a pod's namespace (its veth pair goes with it), killing anything left in it."""
        network = self.pods.pop(pod_uid, None)
        if network is not None:
            _delete_netns(network.netns)

    def close(self) -> None:
        """Removes every pod namespace and the bridge."""
        for pod_uid in list(self.pods):
            self.remove_pod(pod_uid)
        ip("link", "del", self.name, check=False)


def _free_subnet() -> ipaddress.IPv4Network:
    routes = json.loads(ip("-j", "route", "show", "table", "all") or "[]")
    used = []
    for route in routes:
        try:
            used.append(ipaddress.ip_network(route.get("dst", ""), strict=False))
        except ValueError:
            continue
    for subnet in SUBNETS.subnets(new_prefix=24):
        if not any(subnet.overlaps(other) for other in used if other.prefixlen > 0):
            return subnet
    raise RuntimeError(f"no free /24 left in {SUBNETS}")


def _delete_netns(netns: str) -> None:
    # Processes still in the namespace were started by this fixture (now or in a crashed run).
    for text in ip("netns", "pids", netns, check=False).split():
        try:
            os.kill(int(text), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    ip("netns", "del", netns, check=False)


def remove_leftovers() -> None:
    """Deletes namespaces and bridges of earlier runs whose pytest process is gone."""
    for line in ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(NETNS_PREFIX):
            continue
        owner = name[len(NETNS_PREFIX):].split("-")[0]
        if owner.isdigit() and not _is_alive(int(owner)):
            log.warning("removing leftover network namespace %s", name)
            _delete_netns(name)
    links = json.loads(ip("-j", "link", "show", "type", "bridge") or "[]")
    for link in links:
        name = link.get("ifname", "")
        if not (name.startswith(LINK_PREFIX) and name.endswith("b")):
            continue
        owner = _pid_of(name[len(LINK_PREFIX):-1])
        if owner is not None and not _is_alive(owner):
            log.warning("removing leftover bridge %s", name)
            ip("link", "del", name, check=False)


def _pid_of(run_id: str) -> int | None:
    try:
        return int(run_id, 36)
    except ValueError:
        return None
