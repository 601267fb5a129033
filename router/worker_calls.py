"""The router's calls to its workers, with each failure sorted: another worker can make up for it
(WorkerLost), or the client must hear of it (RouterError).

A Cancel that does not arrive is logged and counted: the worker frees the state itself once the
call is gone or the lease ends, but until then it holds blocks nobody uses.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from router.decode_streams import DecodeStream, StreamSet
from router.errors import ErrorCode, RouterError
from router.worker_pool import WorkerHandle, WorkerPool
from tandem.api.v1 import worker_pb2
from tandem.telemetry.metrics import default_metrics
from tandem.telemetry.tracing import inject_context

log = logging.getLogger(__name__)

# gRPC codes that mean "this worker is gone or refuses": try another one.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
CANCEL_TIMEOUT_S = 2.0


class WorkerLost(Exception):
    """A worker failed or refused in a way another worker can make up for."""

    def __init__(self, worker_id: str, message: str) -> None:
        super().__init__(message)
        self.worker_id = worker_id


class ReservationGone(WorkerLost):
    """The decode worker refused the KV of a reservation it no longer holds (cancelled, lease
    expired): a retry with a new reservation may succeed, and neither worker is at fault."""


class WorkerCalls:
    """Unary calls, Decode streams and Cancels over the pool's channels."""

    def __init__(self, pool: WorkerPool, rpc_timeout_s: float) -> None:
        self.pool = pool
        self.rpc_timeout_s = rpc_timeout_s

    async def unary(self, handle: WorkerHandle, method, request):
        """Calls one unary method of a worker (its stub's bound method)."""
        try:
            return await method(request, timeout=self.rpc_timeout_s, metadata=inject_context([]))
        except grpc.aio.AioRpcError as exc:
            raise self._classify(handle, exc) from None

    def open_decode(self, decode: WorkerHandle, request: worker_pb2.DecodeRequest,
                    sample_indices: list[int]) -> DecodeStream:
        """Starts a Decode call for the given client samples (read it with read)."""
        stream = DecodeStream(decode, request, sample_indices)
        stream.call = decode.stub.Decode(request, timeout=self.rpc_timeout_s,
                                         metadata=inject_context([]))
        return stream

    async def read(self, stream: DecodeStream) -> worker_pb2.DecodeChunk | None:
        """The call's next chunk (worker sample index), or None at its end."""
        try:
            chunk = await stream.call.read()
        except grpc.aio.AioRpcError as exc:
            raise self._classify(stream.handle, exc) from None
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            # The call was cancelled under us (its channel closed when the worker left): the
            # worker is lost to this request, which moves on instead of waiting forever.
            raise WorkerLost(stream.handle.worker_id,
                             f"{stream.handle.role} worker {stream.handle.worker_id} left "
                             "(its stream was closed)") from None
        return None if chunk is grpc.aio.EOF else chunk

    async def close(self, streams: StreamSet, stream: DecodeStream, reason: str) -> None:
        """Stops a stream and cancels what the worker still runs of it."""
        await streams.stop(stream)
        if not stream.is_done:
            await self.cancel(stream.handle, stream.worker_request_id, reason)

    async def cancel(self, handle: WorkerHandle, worker_request_id: str, reason: str) -> None:
        """Cancels a request's state on a worker; a failure is logged and counted, not raised."""
        request = worker_pb2.CancelRequest(request_id=worker_request_id, reason=reason)
        try:
            await handle.stub.Cancel(request, timeout=CANCEL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            log.warning("cancel (%s) of worker request %s on %s failed: %s: %s", reason,
                        worker_request_id, handle.worker_id, exc.code().name, exc.details())
            default_metrics().dropped_errors.labels(component="router", kind="cancel_failed").inc()
        except grpc.aio.UsageError as exc:  # the worker left and its channel is closed
            log.warning("cancel (%s) of worker request %s on %s not sent: %s", reason,
                        worker_request_id, handle.worker_id, exc)
            default_metrics().dropped_errors.labels(component="router", kind="cancel_failed").inc()

    def _classify(self, handle: WorkerHandle, exc: grpc.aio.AioRpcError) -> Exception:
        code = exc.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return RouterError(ErrorCode.INVALID_ARGUMENT, exc.details())
        if code == grpc.StatusCode.FAILED_PRECONDITION and handle.role == "prefill":
            return ReservationGone(handle.worker_id, f"prefill worker {handle.worker_id}: "
                                                     f"{exc.details()}")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return WorkerLost(handle.worker_id, f"{handle.worker_id} is full: {exc.details()}")
        if code in RETRYABLE:
            self.pool.mark_failed(handle, f"{code.name}: {exc.details()}")
            return WorkerLost(handle.worker_id, f"{handle.role} worker {handle.worker_id} lost: "
                                                f"{code.name}: {exc.details()}")
        return RouterError(ErrorCode.INTERNAL, f"{handle.role} worker {handle.worker_id}: "
                                               f"{code.name}: {exc.details()}")
