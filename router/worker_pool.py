"""The router's view of its workers: stubs, last reported load, and health.

Discovery says which addresses exist; this pool connects to each, polls its load (GetLoad) at a
short interval, and keeps the snapshots that worker choice scores. A worker that fails a poll or a
request leaves the candidate set until a poll succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from tandem.api.v1 import worker_pb2, worker_pb2_grpc
from tandem.policy.worker_choice import WorkerSnapshot
from tandem.serving.grpc_server import CHANNEL_OPTIONS
from tandem.serving.worker_auth import worker_token_interceptors

log = logging.getLogger(__name__)

# How long a worker that left discovery keeps its channel for the streams still on it (a pod's
# default termination grace is 30 s).
LEAVING_GRACE_S = 60.0

ROLE_NAMES = {worker_pb2.WORKER_ROLE_PREFILL: "prefill", worker_pb2.WORKER_ROLE_DECODE: "decode"}


@dataclass(slots=True)
class WorkerHandle:
    """One worker as the router knows it."""

    address: str
    role: str
    channel: grpc.aio.Channel
    stub: object
    load: worker_pb2.WorkerLoad | None = None
    is_healthy: bool = False
    # Requests routed here since the last load report: keeps a burst from piling onto one worker.
    num_inflight_since_poll: int = 0

    @property
    def worker_id(self) -> str:
        """The worker's own id, or its address until it has reported."""
        return self.load.worker_id if self.load is not None and self.load.worker_id else self.address

    @property
    def model(self) -> str:
        """The model the worker serves ("" until it has reported)."""
        return self.load.model if self.load is not None else ""

    def snapshot(self) -> WorkerSnapshot:
        """The load in the form worker choice scores."""
        load = self.load
        return WorkerSnapshot(
            worker_id=self.worker_id,
            num_running=load.num_running,
            num_waiting=load.num_waiting + self.num_inflight_since_poll,
            num_queued_prompt_tokens=load.num_queued_prompt_tokens,
            num_kv_blocks_total=load.num_kv_blocks_total,
            num_kv_blocks_used=load.num_kv_blocks_used,
            is_accepting=load.accepting and self.is_healthy,
        )


class WorkerPool:
    """Keeps stubs and load snapshots for every discovered worker.

    Every call on its channels carries worker_token (None: no token, for workers started with
    --insecure-no-worker-auth).
    """

    def __init__(self, poll_interval_s: float = 0.1, call_timeout_s: float = 2.0, *,
                 worker_token: str | None) -> None:
        self._interceptors = worker_token_interceptors(worker_token) if worker_token is not None else None
        self.poll_interval_s = poll_interval_s
        self.call_timeout_s = call_timeout_s
        self._workers: dict[str, WorkerHandle] = {}
        self._poller: asyncio.Task | None = None

    def set_endpoints(self, endpoints: list[tuple[str, str]]) -> None:
        """Replaces the set of (address, role) pairs; connects to new ones, drops vanished ones."""
        wanted = dict(endpoints)
        for address in [a for a in self._workers if a not in wanted]:
            handle = self._workers.pop(address)
            # A leaving worker (a pod terminating) still drains its streams: let them finish.
            asyncio.get_running_loop().create_task(handle.channel.close(grace=LEAVING_GRACE_S))
            log.info("worker %s (%s) left", address, handle.role)
        for address, role in wanted.items():
            if address not in self._workers:
                self._workers[address] = _connect(address, role, self._interceptors)
                log.info("worker %s (%s) joined", address, role)

    def endpoints(self) -> list[tuple[str, str]]:
        """Every known (address, role), healthy or not."""
        return sorted((address, w.role) for address, w in self._workers.items())

    def healthy(self, role: str, model: str | None = None) -> list[WorkerHandle]:
        """Healthy, accepting workers of a role (and model, when given)."""
        return [w for w in self._workers.values()
                if w.role == role and w.is_healthy and w.load is not None and w.load.accepting
                and (model is None or w.model == model)]

    def models(self) -> dict[str, worker_pb2.WorkerLoad]:
        """Model name -> one decode worker's load report (carries max_context and layout)."""
        found = {}
        for worker in self._workers.values():
            if worker.role == "decode" and worker.load is not None and worker.is_healthy:
                found.setdefault(worker.model, worker.load)
        return found

    def mark_failed(self, handle: WorkerHandle, error: str) -> None:
        """Takes a worker out of the candidate set until its next successful poll."""
        if handle.is_healthy:
            log.warning("worker %s marked unhealthy: %s", handle.address, error)
        handle.is_healthy = False

    async def start(self) -> None:
        """Polls every worker once, then keeps polling in the background."""
        await self.poll_once()
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def stop(self) -> None:
        """Stops polling and closes every channel."""
        if self._poller is not None:
            self._poller.cancel()
        for handle in self._workers.values():
            await handle.channel.close()

    async def poll_once(self) -> None:
        """Refreshes every worker's load once."""
        await asyncio.gather(*(self._poll(h) for h in list(self._workers.values())))

    async def wait_for(self, role: str, timeout_s: float) -> None:
        """Waits until at least one healthy worker of the role exists."""
        deadline = time.monotonic() + timeout_s
        while not self.healthy(role):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no healthy {role} worker after {timeout_s:.0f}s")
            await asyncio.sleep(self.poll_interval_s)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            await self.poll_once()

    async def _poll(self, handle: WorkerHandle) -> None:
        try:
            load = await handle.stub.GetLoad(worker_pb2.GetLoadRequest(), timeout=self.call_timeout_s)
        except grpc.aio.AioRpcError as exc:
            self.mark_failed(handle, f"GetLoad: {exc.code().name}: {exc.details()}")
            return
        expected = handle.role
        if ROLE_NAMES.get(load.role) != expected:
            self.mark_failed(handle, f"reports role {ROLE_NAMES.get(load.role)}, expected {expected}")
            return
        if not handle.is_healthy:
            log.info("worker %s (%s) healthy", handle.address, handle.role)
        handle.load, handle.is_healthy = load, True
        handle.num_inflight_since_poll = 0


# gRPC's default reconnect backoff grows to two minutes: after a long outage a restarted worker
# would wait that long to rejoin. Load polling already limits how often a dead worker is tried.
WORKER_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.initial_reconnect_backoff_ms", 250),
                          ("grpc.max_reconnect_backoff_ms", 1000)]


def _connect(address: str, role: str, interceptors: list | None) -> WorkerHandle:
    channel = grpc.aio.insecure_channel(address, options=WORKER_CHANNEL_OPTIONS,
                                        interceptors=interceptors)
    stub_class = (worker_pb2_grpc.PrefillWorkerStub if role == "prefill"
                  else worker_pb2_grpc.DecodeWorkerStub)
    return WorkerHandle(address=address, role=role, channel=channel, stub=stub_class(channel))
