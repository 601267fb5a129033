"""Shared fixtures of the simulator tests: the perf model (needs ../shared/data) and small traces."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.sim.hardware import default_perf_csv, shared_data_dir
from tandem.sim.traces import Trace


@pytest.fixture(scope="session")
def perf_csv():
    path = default_perf_csv()
    if not path.is_file():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def azure_trace_path():
    path = shared_data_dir() / "traces" / "azure_llm_2023_conv.csv"
    if not path.is_file():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def mooncake_trace_path():
    path = shared_data_dir() / "traces" / "mooncake_conversation_trace.jsonl"
    if not path.is_file():
        pytest.skip(f"shared data not available: {path}")
    return path


def make_trace(arrivals, prompts, outputs, hashes=None, block_size=512) -> Trace:
    """A trace from plain lists."""
    return Trace(np.asarray(arrivals, dtype=np.float64), np.asarray(prompts, dtype=np.int64),
                 np.asarray(outputs, dtype=np.int64), hashes, block_size, "test")
