"""The Decode calls of one request, each read by its own task into one event queue.

A request decodes on one worker until that worker is lost; then each unfinished sample resumes on
a worker of its own, so several calls may stream at once. Each call's events keep their order in
the queue; an event is a DecodeChunk, StreamEnded, or the error that ended the call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from router.worker_pool import WorkerHandle
from tandem.api.v1 import worker_pb2
from tandem.telemetry.tracing import span


class StreamEnded:
    """The worker closed the call normally."""


@dataclass(eq=False, slots=True)
class DecodeStream:
    """One Decode call: the worker, the request as sent (with its worker-side id), and the
    client's sample index of each of the call's samples."""

    handle: WorkerHandle
    request: worker_pb2.DecodeRequest
    sample_indices: list[int]
    call: grpc.aio.UnaryStreamCall | None = None
    task: asyncio.Task | None = None
    # Samples (the call's own indices) the worker has finished.
    finished: set[int] = field(default_factory=set)

    @property
    def worker_request_id(self) -> str:
        """The id this request has on the worker."""
        return self.request.request_id

    @property
    def is_done(self) -> bool:
        """True once the worker has finished every sample of the call."""
        return len(self.finished) == len(self.sample_indices)

    def client_chunk(self, chunk: worker_pb2.DecodeChunk) -> worker_pb2.DecodeChunk:
        """The chunk with the client's sample index (and the call's bookkeeping updated)."""
        if chunk.finish_reason:
            self.finished.add(chunk.sample_index)
        chunk.sample_index = self.sample_indices[chunk.sample_index]
        return chunk


class StreamSet:
    """The running calls of one request and the queue their tasks feed."""

    def __init__(self, read: Callable) -> None:
        # read(stream) -> next DecodeChunk, or None at the end; raises the error that ended the call.
        self._read = read
        self._queue: asyncio.Queue = asyncio.Queue()
        self.active: list[DecodeStream] = []

    def start(self, stream: DecodeStream) -> None:
        """Reads the rest of the stream's call in a task of its own."""
        self.active.append(stream)
        stream.task = asyncio.get_running_loop().create_task(self._pump(stream))

    async def next_event(self) -> tuple[DecodeStream, object]:
        """The next event of any active stream."""
        return await self._queue.get()

    async def stop(self, stream: DecodeStream) -> None:
        """Stops reading a stream and cancels its call (the caller cancels the worker's state)."""
        with contextlib.suppress(ValueError):
            self.active.remove(stream)
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream.task
        if stream.call is not None:
            stream.call.cancel()

    async def _pump(self, stream: DecodeStream) -> None:
        with span("router.decode", worker=stream.handle.worker_id,
                  colocated=stream.request.colocated):
            try:
                while (chunk := await self._read(stream)) is not None:
                    self._queue.put_nowait((stream, chunk))
                self._queue.put_nowait((stream, StreamEnded()))
            except Exception as exc:  # handed to the request's relay loop, which decides
                self._queue.put_nowait((stream, exc))
