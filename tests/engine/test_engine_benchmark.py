"""Smoke run of benchmarks/engine.py --quick: the script works and prints its figures as JSON."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_engine_benchmark_quick_prints_its_figures():
    result = subprocess.run([sys.executable, "benchmarks/engine.py", "--quick", "--threads", "1"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["params"]["quick"] is True
    for section, key in [("batch1", "decode_speedup"), ("mixed", "throughput_ratio_vs_best_hf"),
                         ("roofline", "step_over_roofline")]:
        assert report[section][key] > 0
    assert report["roofline"]["weight_bytes"] > 0
