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

from tandem.telemetry.metrics import default_metrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StreamClosed:
    """Put on a request's queue when it ends outside the engine (cancelled): no more outputs."""

    reason: str


class EngineStopped(RuntimeError):
    """The engine thread has stopped: a command sent to it will never run."""


@dataclass(slots=True)
class EngineFailure:
    """Put on a request's queue when the engine step failed; the request cannot go on."""

    message: str


class EngineLoop:
    """Owns the engine thread; all methods are called from the asyncio loop's thread."""

    def __init__(self, engine, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.engine = engine
        self._loop = loop or asyncio.get_running_loop()
        self._commands: deque[tuple[Callable, asyncio.Future | None, Callable | None]] = deque()
        self._wakeup = threading.Condition()
        self._streams: dict[str, asyncio.Queue] = {}
        self._is_running = False
        self._is_stopped = False
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.stats = engine.stats()

    def start(self) -> None:
        """Starts the engine thread."""
        self._is_running = True
        self._thread.start()

    async def stop(self) -> None:
        """Stops the engine thread after the step in progress; commands it did not run fail."""
        with self._wakeup:
            self._is_running = False
            self._is_stopped = True
            self._wakeup.notify()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)
        with self._wakeup:
            left = list(self._commands)
            self._commands.clear()
        if left:
            # Their callers would otherwise wait forever, and the process with them.
            log.warning("engine thread stopped with %d commands not run; failing them", len(left))
            default_metrics().dropped_errors.labels(component="engine_loop",
                                                    kind="command_after_stop").inc(len(left))
        for _command, future, _undo in left:
            if future is not None and not future.done():
                future.set_exception(EngineStopped("the engine thread has stopped"))

    async def call(self, fn: Callable[..., Any], *args: Any,
                   undo: Callable[[Any], Any] | None = None, **kwargs: Any) -> Any:
        """Runs fn(*args, **kwargs) on the engine thread between steps and returns its result.

        undo(result), when given, runs on the engine thread if the caller is gone (cancelled)
        by the time fn has succeeded, so that what fn took (blocks, a request) is given back.
        """
        future = self._loop.create_future()
        with self._wakeup:
            if self._is_stopped:
                raise EngineStopped(f"the engine thread has stopped; {getattr(fn, '__name__', fn)} "
                                    "cannot run")
            self._commands.append((lambda: fn(*args, **kwargs), future, undo))
            self._wakeup.notify()
        try:
            return await future
        except asyncio.CancelledError:
            # The result may have arrived just as the caller was cancelled: nobody will use it.
            if undo is not None and future.done() and not future.cancelled() and future.exception() is None:
                self.submit_soon(undo, future.result())
            raise

    def submit_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Runs fn(*args) on the engine thread between steps, from any thread; errors are logged."""
        def command() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("engine command %s%r failed; nobody waits for it",
                              getattr(fn, "__name__", fn), args)
                default_metrics().dropped_errors.labels(component="engine_loop",
                                                        kind="command_failed").inc()

        with self._wakeup:
            if self._is_stopped:
                log.warning("engine command %s%r dropped: the engine thread has stopped",
                            getattr(fn, "__name__", fn), args)
                default_metrics().dropped_errors.labels(component="engine_loop",
                                                        kind="command_after_stop").inc()
                return
            self._commands.append((command, None, None))
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
            for command, future, undo in commands:
                self._run_command(command, future, undo)
            if self._has_work():
                self._step()

    def _has_work(self) -> bool:
        # A stalled engine (nothing admissible until a release or abort) waits for a command.
        return self.engine.has_unfinished_requests() and not self.engine.is_stalled

    def _run_command(self, command: Callable, future: asyncio.Future | None,
                     undo: Callable | None) -> None:
        if future is None:
            command()
            self.stats = self.engine.stats()
            return
        try:
            result = command()
        except Exception as exc:  # handed to the caller, who turns it into a status
            self._loop.call_soon_threadsafe(self._settle, future, None, exc, None)
        else:
            self._loop.call_soon_threadsafe(self._settle, future, result, None, undo)
        self.stats = self.engine.stats()

    def _settle(self, future: asyncio.Future, result: Any, exc: BaseException | None,
                undo: Callable | None) -> None:
        if future.cancelled():
            # The caller is gone: give back what the command took, on the engine thread.
            if exc is None and undo is not None:
                log.info("caller of an engine command is gone; undoing it")
                self.submit_soon(undo, result)
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

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
