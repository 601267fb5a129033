"""Each simulator benchmark runs with --quick and prints one JSON object (speed is not asserted)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def _run(name: str) -> dict:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), "--quick"], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.usefixtures("perf_csv", "azure_trace_path", "mooncake_trace_path")
def test_splitwise_benchmark_quick():
    result = _run("simulate_splitwise.py")
    assert result["parameters"]["quick"] is True
    assert set(result["azure"]) == {"batch-sweep", "splitwise-sim"}
    for part in result["azure"].values():
        designs = {r["design"]: r for r in part["iso_cost"]["designs"]}
        assert {"Baseline-H100", "Splitwise-HH", "Splitwise-HA", "Tandem-HH"} <= set(designs)
        assert designs["Baseline-H100"]["max_rate_rps"] > 0
        assert part["iso_cost"]["throughput_vs_baseline_h100"]["Baseline-H100"] == 1.0
    names = [r["design"] for r in result["mooncake_prefix"]["designs"]]
    assert names[0] == "Splitwise-HH" and "Tandem-HH" in names


@pytest.mark.usefixtures("perf_csv", "azure_trace_path")
def test_autoscaling_benchmark_quick():
    result = _run("simulate_autoscaling.py")
    params = result["parameters"]
    assert params["start_machines"] == {"prefill": 1, "decode": 1}
    # Settings are chosen on a part that is not reported, on a seed that is not reported.
    assert params["tune"]["measured_to_s"] <= params["report"]["measured_from_s"]
    assert params["tuning_seed"] not in params["report_seeds"] and len(params["report_seeds"]) == 3
    assert set(result["tuning"]) == {"phase", "utilization"}
    for tuning in result["tuning"].values():
        assert len(tuning["tried"]) >= 2 and tuning["chosen"]
    assert [seed["seed"] for seed in result["seeds"]] == params["report_seeds"]
    for seed in result["seeds"]:
        policies = {r["policy"]: r for r in seed["policies"]}
        assert set(policies) == {"static-oracle", "static-at-phase-peak", "hpa-like", "phase"}
        assert policies["static-oracle"]["slo_met"] is True  # the oracle meets them by search
        assert policies["static-oracle"]["num_scaling_actions"] == 0
        assert policies["static-oracle"]["gpu_hours_vs_oracle"] == 1.0
        assert all(r["gpu_hours"] > 0 for r in policies.values())
    assert [r["policy"] for r in result["mean_over_seeds"]] == [
        "static-oracle", "static-at-phase-peak", "hpa-like", "phase"]


@pytest.mark.usefixtures("perf_csv", "azure_trace_path")
def test_speed_benchmark_quick():
    result = _run("simulate_speed.py")
    runs = {r["run"]: r for r in result["runs"]}
    assert runs["poisson_20000"]["num_requests"] == 20_000
    assert runs["azure_trace"]["num_requests"] > 1000
    assert all(r["requests_per_cpu_s"] > 0 for r in runs.values())
