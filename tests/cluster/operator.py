"""The real kopf operator from `tandem_operator`, unchanged, in a thread with its own event loop.

It reaches the API through the kubeconfig in `KUBECONFIG` (set by the caller), as `tandem
operator` does outside a cluster. On exit kopf cancels only the tasks of its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

import tandem_operator.main  # noqa: F401  (registers the handlers)
from tandem_operator.cli import operate
from tandem_operator.context import OperatorOptions


@contextlib.asynccontextmanager
async def running_operator(options: OperatorOptions) -> AsyncIterator[None]:
    """Runs the operator until the block exits; fails if it cannot start or stops with an error."""
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(operate(options, stop_flag=stop, ready_flag=ready))
        except BaseException as exc:  # surfaced to the caller below
            errors.append(exc)

    thread = threading.Thread(target=run, name="tandem-operator", daemon=True)
    thread.start()
    assert await asyncio.to_thread(ready.wait, 60), f"the operator did not start: {errors}"
    try:
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 60)
        assert not thread.is_alive() and not errors, f"the operator did not stop cleanly: {errors}"
