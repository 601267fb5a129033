"""Worker discovery: which prefill and decode workers exist, and which of them are healthy.

A `WorkerDiscovery` yields the current set of `WorkerEndpoint`s and notifies changes. Two
sources: `StaticDiscovery` (a fixed list, e.g. from `tandem serve` or `--worker` flags) and
`KubernetesDiscovery` (EndpointSlices, in `router.discovery_k8s`). `WorkerHealth` is the pure
bookkeeping of failed calls and health probes: a worker leaves the routable set after failed
calls and comes back after a successful probe, probed with exponential backoff meanwhile.
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


def parse_endpoint(spec: str) -> WorkerEndpoint:
    """Parses 'role:model@host:port' or 'role:model@host:port#worker_id' (worker_id defaults to host:port)."""
    head, at, rest = spec.partition("@")
    role, colon, model = head.partition(":")
    address, _, worker_id = rest.partition("#")
    if not at or not colon:
        raise ValueError(f"worker spec {spec!r}: expected 'role:model@host:port[#worker_id]'")
    try:
        return WorkerEndpoint(worker_id or address, address, WorkerRole(role), model)
    except ValueError as exc:
        raise ValueError(f"worker spec {spec!r}: {exc}") from None


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


class StaticDiscovery:
    """A fixed list of workers (replaceable with set_endpoints)."""

    def __init__(self, endpoints: Iterable[WorkerEndpoint]) -> None:
        self._set = EndpointSet()
        self.set_endpoints(endpoints)

    def set_endpoints(self, endpoints: Iterable[WorkerEndpoint]) -> None:
        """Replaces the list; rejects two endpoints with the same worker id."""
        endpoints = list(endpoints)
        worker_ids = [e.worker_id for e in endpoints]
        duplicates = sorted({w for w in worker_ids if worker_ids.count(w) > 1})
        if duplicates:
            raise ValueError(f"StaticDiscovery: duplicate worker ids {duplicates}")
        self._set.replace(endpoints)

    def endpoints(self) -> frozenset[WorkerEndpoint]:
        """The configured workers."""
        return self._set.current

    def watch(self) -> AsyncIterator[frozenset[WorkerEndpoint]]:
        """Yields the list, then again whenever set_endpoints changes it."""
        return self._set.watch()

    async def start(self) -> None:
        """Nothing to start: the list is known."""

    async def close(self) -> None:
        """Nothing to stop."""


class HealthState(enum.StrEnum):
    """Whether the router sends requests to a worker."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(slots=True)
class HealthConfig:
    """When a worker is taken out, and how often an unhealthy one is probed."""

    failure_threshold: int = 1
    initial_probe_delay_s: float = 1.0
    max_probe_delay_s: float = 30.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"HealthConfig: failure_threshold must be >= 1, got {self.failure_threshold}")
        if not 0 < self.initial_probe_delay_s <= self.max_probe_delay_s:
            raise ValueError("HealthConfig: need 0 < initial_probe_delay_s <= max_probe_delay_s")


@dataclass(slots=True)
class _WorkerRecord:
    state: HealthState = HealthState.HEALTHY
    num_consecutive_failures: int = 0
    probe_delay_s: float = 0.0
    next_probe_at: float = 0.0


class WorkerHealth:
    """Pure health bookkeeping (no I/O, clock passed in); the caller makes the calls and probes."""

    def __init__(self, config: HealthConfig | None = None) -> None:
        self.config = config or HealthConfig()
        self._records: dict[str, _WorkerRecord] = {}

    def state(self, worker_id: str) -> HealthState:
        """The worker's state (unknown workers are healthy)."""
        record = self._records.get(worker_id)
        return record.state if record else HealthState.HEALTHY

    def is_healthy(self, worker_id: str) -> bool:
        """Whether requests may go to this worker."""
        return self.state(worker_id) is HealthState.HEALTHY

    def record_failure(self, worker_id: str, now: float) -> bool:
        """Counts a failed call or probe; returns True when this failure takes the worker out."""
        record = self._records.setdefault(worker_id, _WorkerRecord())
        record.num_consecutive_failures += 1
        if record.state is HealthState.UNHEALTHY:
            # A failed probe: wait twice as long before the next one.
            record.probe_delay_s = min(self.config.max_probe_delay_s, record.probe_delay_s * 2)
            record.next_probe_at = now + record.probe_delay_s
            return False
        if record.num_consecutive_failures < self.config.failure_threshold:
            return False
        record.state = HealthState.UNHEALTHY
        record.probe_delay_s = self.config.initial_probe_delay_s
        record.next_probe_at = now + record.probe_delay_s
        return True

    def record_success(self, worker_id: str) -> bool:
        """Counts a successful call or probe; returns True when it brings the worker back."""
        record = self._records.pop(worker_id, None)
        return record is not None and record.state is HealthState.UNHEALTHY

    def due_for_probe(self, now: float) -> list[str]:
        """Unhealthy workers whose next health probe is due, soonest first."""
        due = [(r.next_probe_at, worker_id) for worker_id, r in self._records.items()
               if r.state is HealthState.UNHEALTHY and r.next_probe_at <= now]
        return [worker_id for _, worker_id in sorted(due)]

    def healthy(self, endpoints: Iterable[WorkerEndpoint]) -> list[WorkerEndpoint]:
        """The endpoints whose workers are healthy."""
        return [e for e in endpoints if self.is_healthy(e.worker_id)]

    def forget(self, worker_ids: Iterable[str]) -> None:
        """Drops the records of workers that discovery no longer lists."""
        for worker_id in worker_ids:
            self._records.pop(worker_id, None)
