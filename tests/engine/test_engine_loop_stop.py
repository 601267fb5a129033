"""A stopped engine thread answers every command it will never run, so no caller waits forever.

A worker stops its engine thread while shutting down; a handler or cleanup that still awaits an
engine command then must get an error at once, or the process never finishes exiting.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import LLMEngine
from tandem.serving.engine_loop import EngineLoop, EngineStopped
from tandem.telemetry.metrics import default_metrics


@pytest.fixture
def engine(tiny_llama_dir):
    return LLMEngine(tiny_llama_dir, EngineConfig(block_size=4, num_blocks=12))


def _dropped_commands() -> float:
    value = default_metrics().registry.get_sample_value(
        "tandem_dropped_errors_total", {"component": "engine_loop", "kind": "command_after_stop"})
    return value or 0.0


async def test_commands_queued_when_the_thread_stops_fail_instead_of_hanging(engine):
    loop = EngineLoop(engine)
    loop.start()
    running, release = threading.Event(), threading.Event()

    def hold() -> str:
        running.set()
        release.wait(timeout=30)
        return "held"

    held = asyncio.ensure_future(loop.call(hold))
    await asyncio.to_thread(running.wait, 30)
    queued = asyncio.ensure_future(loop.call(engine.stats))
    dropped_before = _dropped_commands()
    loop.submit_soon(engine.stats)
    stopping = asyncio.ensure_future(loop.stop())
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(stopping, timeout=30)
    assert await asyncio.wait_for(held, timeout=30) == "held"
    with pytest.raises(EngineStopped):
        await asyncio.wait_for(queued, timeout=30)
    assert _dropped_commands() == dropped_before + 2  # the queued call and the submitted command


async def test_a_command_after_stop_fails_at_once(engine):
    loop = EngineLoop(engine)
    loop.start()
    await loop.stop()
    dropped_before = _dropped_commands()
    with pytest.raises(EngineStopped):
        await asyncio.wait_for(loop.call(engine.stats), timeout=30)
    loop.submit_soon(engine.stats)
    assert _dropped_commands() == dropped_before + 1
