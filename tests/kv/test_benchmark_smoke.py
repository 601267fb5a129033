"""The KV transfer benchmark runs end to end in its quick mode and prints its JSON."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.kv.peers import UCX_ENV

pytestmark = pytest.mark.slow

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "kv_transfer.py"


def test_quick_benchmark_prints_verified_results():
    env = {**os.environ, **UCX_ENV}
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--sizes-mb", "1", "2", "--repeats", "1"],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    rows = report["handoff_bandwidth"]
    assert [row["size_mb"] for row in rows] == [1.0, 2.0]
    assert all(row["verified"] and row["tandem_gbps"] > 0 and row["raw_gbps"] > 0 for row in rows)
