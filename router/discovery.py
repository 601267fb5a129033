"""Worker discovery: which prefill and decode workers exist.

A `WorkerDiscovery` yields the current set of `WorkerEndpoint`s and notifies changes; the
Kubernetes one (EndpointSlices) is in `router.discovery_k8s`, and static lists are fed to the
router's worker pool directly (router.worker_sources). Health is the pool's business: it polls
every worker and routes only to those that answer (router.worker_pool).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol


class WorkerRole(enum.StrEnum):
    """Which phase a worker serves."""

    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(slots=True, frozen=True)
class WorkerEndpoint:
    """One worker: its id (pod name or host:port), gRPC address "host:port", role and model tier."""

    worker_id: str
    address: str
    role: WorkerRole
    model: str

    def __post_init__(self) -> None:
        if not self.worker_id:
            raise ValueError("WorkerEndpoint: worker_id must not be empty")
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"WorkerEndpoint: address must be 'host:port', got {self.address!r}")
        object.__setattr__(self, "role", WorkerRole(self.role))
        if not self.model:
            raise ValueError("WorkerEndpoint: model must not be empty")




class WorkerDiscovery(Protocol):
    """A source of worker endpoints."""

    def endpoints(self) -> frozenset[WorkerEndpoint]:
        """The workers known now."""
        ...

    def watch(self) -> AsyncIterator[frozenset[WorkerEndpoint]]:
        """Yields the current set at once, then the whole new set after every change."""
        ...

    async def start(self) -> None:
        """Starts following the source (returns once the first set is known)."""
        ...

    async def close(self) -> None:
        """Stops following the source."""
        ...


class EndpointSet:
    """The current endpoints with change notification for any number of watchers."""

    def __init__(self) -> None:
        self._current: frozenset[WorkerEndpoint] = frozenset()
        self._version = 0
        self._changed = asyncio.Event()

    @property
    def current(self) -> frozenset[WorkerEndpoint]:
        """The endpoints now."""
        return self._current

    def replace(self, endpoints: Iterable[WorkerEndpoint]) -> bool:
        """Sets the endpoints; wakes the watchers and returns True if they changed."""
        endpoints = frozenset(endpoints)
        if endpoints == self._current:
            return False
        self._current = endpoints
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    async def watch(self) -> AsyncIterator[frozenset[WorkerEndpoint]]:
        """Yields the current endpoints, then again after each change (intermediate states may be skipped)."""
        seen_version = -1
        while True:
            changed = self._changed
            if seen_version != self._version:
                seen_version = self._version
                yield self._current
                continue
            await changed.wait()










