"""Runs an LLMEngine on its own thread and exposes it to asyncio code.

The engine is not thread-safe, so every call into it (adding, aborting, reserving, stepping)
happens on one thread. asyncio code submits commands that run between steps and receives each
request's outputs on its own asyncio queue. The thread steps while there is work and sleeps on a
condition otherwise, so an idle worker costs no CPU.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StreamClosed:
    """Put on a request's queue when it ends outside the engine (cancelled): no more outputs."""

    reason: str


@dataclass(slots=True)
class EngineFailure:
    """Put on a request's queue when the engine step failed; the request cannot go on."""

    message: str


class EngineLoop:
    """Owns the engine thread; all methods are called from the asyncio loop's thread."""

    def __init__(self, engine, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.engine = engine
        self._loop = loop or asyncio.get_running_loop()
        self._commands: deque[tuple[Callable, asyncio.Future | None]] = deque()
        self._wakeup = threading.Condition()
        self._streams: dict[str, asyncio.Queue] = {}
        self._is_running = False
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.stats = engine.stats()

    def start(self) -> None:
        """Starts the engine thread."""
        self._is_running = True
        self._thread.start()

    async def stop(self) -> None:
        """Stops the engine thread after the step in progress."""
        with self._wakeup:
            self._is_running = False
            self._wakeup.notify()
        await asyncio.to_thread(self._thread.join)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs fn(*args, **kwargs) on the engine thread between steps and returns its result."""
        future = self._loop.create_future()
        with self._wakeup:
            self._commands.append((lambda: fn(*args, **kwargs), future))
            self._wakeup.notify()
        return await future

    def submit_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Runs fn(*args) on the engine thread between steps, from any thread; errors are logged."""
        def command() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("engine command %s%r failed", getattr(fn, "__name__", fn), args)

        with self._wakeup:
            self._commands.append((command, None))
            self._wakeup.notify()

    def open_stream(self, request_id: str, queue: asyncio.Queue | None = None) -> asyncio.Queue:
        """Registers the queue that receives request_id's outputs (before adding the request);
        several requests may share one queue (the samples of one client request)."""
        queue = asyncio.Queue() if queue is None else queue
        self._streams[request_id] = queue
        return queue

    def close_stream(self, request_id: str) -> None:
        """Stops delivering outputs for request_id."""
        self._streams.pop(request_id, None)

    def end_stream(self, request_id: str, reason: str) -> None:
        """Closes request_id's stream and tells its reader why (StreamClosed)."""
        queue = self._streams.pop(request_id, None)
        if queue is not None:
            queue.put_nowait(StreamClosed(reason))

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while self._is_running and not self._commands and not self._has_work():
                    self._wakeup.wait()
                if not self._is_running:
                    return
                commands = list(self._commands)
                self._commands.clear()
            for command, future in commands:
                self._run_command(command, future)
            if self._has_work():
                self._step()

    def _has_work(self) -> bool:
        return self.engine.has_unfinished_requests()

    def _run_command(self, command: Callable, future: asyncio.Future | None) -> None:
        if future is None:
            command()
            self.stats = self.engine.stats()
            return
        try:
            result = command()
        except Exception as exc:  # handed to the caller, who turns it into a status
            self._loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            self._loop.call_soon_threadsafe(_settle, future, result, None)
        self.stats = self.engine.stats()

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:
            log.exception("engine step failed; failing the requests it held")
            self._fail_everything(f"engine step failed: {exc}")
            return
        self.stats = self.engine.stats()
        if outputs:
            self._loop.call_soon_threadsafe(self._deliver, outputs)

    def _fail_everything(self, message: str) -> None:
        for request_id in list(self._streams):
            self.engine.abort(request_id)
        self._loop.call_soon_threadsafe(self._deliver_failure, message)

    def _deliver(self, outputs: list) -> None:
        for output in outputs:
            queue = self._streams.get(output.request_id)
            if queue is not None:
                queue.put_nowait(output)

    def _deliver_failure(self, message: str) -> None:
        for queue in self._streams.values():
            queue.put_nowait(EngineFailure(message))


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
