"""The kubelet's prober: grpc, httpGet and tcpSocket probes against the pod's own address.

A `Prober` follows one probe of one container with the probe's own period and thresholds (scaled
by the cluster's time scale, with a floor on the timeout: a loaded 2-core test machine must not
turn a slow answer into a failure).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

MIN_TIMEOUT_S = 5.0


def _port(value: Any, container: dict[str, Any]) -> int:
    if isinstance(value, int):
        return value
    for port in container.get("ports") or []:
        if port.get("name") == value:
            return int(port["containerPort"])
    raise ValueError(f"container {container['name']} has no port named {value!r}")


async def probe_once(probe: dict[str, Any], container: dict[str, Any], address: str,
                     timeout_s: float) -> bool:
    """Runs the probe once; True on success."""
    try:
        if "grpc" in probe:
            port = _port(probe["grpc"]["port"], container)
            async with grpc.aio.insecure_channel(f"{address}:{port}") as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")),
                    timeout=timeout_s)
            return answer.status == health_pb2.HealthCheckResponse.SERVING
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = _port(get["port"], container)
            scheme = get.get("scheme", "HTTP").lower()
            url = f"{scheme}://{address}:{port}{get.get('path', '/')}"
            timeout = aiohttp.ClientTimeout(total=timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(url, ssl=False) as response:
                    return 200 <= response.status < 400
        if "tcpSocket" in probe:
            port = _port(probe["tcpSocket"]["port"], container)
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout_s)
            writer.close()
            return True
    except (grpc.RpcError, aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return False
    raise ValueError(f"unsupported probe {sorted(probe)} (grpc, httpGet and tcpSocket are)")


@dataclass(slots=True)
class Prober:
    """The state of one probe: passing or not, after its thresholds."""

    probe: dict[str, Any]
    container: dict[str, Any]
    address: str
    time_scale: float
    is_passing: bool = False
    num_failures: int = 0
    _due: float = field(default=0.0)

    def __post_init__(self) -> None:
        self._due = asyncio.get_running_loop().time() + self.probe.get("initialDelaySeconds", 0) * self.time_scale

    @property
    def failure_threshold(self) -> int:
        """Consecutive failures that count as failed."""
        return self.probe.get("failureThreshold", 3)

    @property
    def has_failed(self) -> bool:
        """Whether the probe failed failureThreshold times in a row."""
        return self.num_failures >= self.failure_threshold

    async def tick(self) -> None:
        """Probes when due and updates the state."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._due:
            return
        timeout = max(self.probe.get("timeoutSeconds", 1), MIN_TIMEOUT_S)
        is_ok = await probe_once(self.probe, self.container, self.address, timeout)
        self._due = loop.time() + self.probe.get("periodSeconds", 10) * self.time_scale
        if is_ok:
            self.num_failures = 0
            self.is_passing = True
        else:
            self.num_failures += 1
            if self.num_failures >= self.failure_threshold:
                self.is_passing = False
