"""Smoke run of benchmarks/router.py --quick: every part runs end to end and reports its figures as JSON."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
ADDED_KEYS = {"ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms"}


@pytest.fixture(scope="module")
def report() -> dict:
    result = subprocess.run([sys.executable, "benchmarks/router.py", "--quick"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_latency_compares_router_and_direct_at_each_concurrency(report):
    assert report["params"]["quick"] is True
    entries = report["latency"]["by_concurrency"]
    assert [e["concurrency"] for e in entries] == report["params"]["concurrencies"]
    for entry in entries:
        for target in ("router", "direct"):
            for metric in ("ttft", "itl"):
                assert entry[target][metric]["num_samples"] > 0
                assert entry[target][metric]["p99_ms"] >= entry[target][metric]["p50_ms"] > 0
        assert set(entry["added"]) == ADDED_KEYS
        assert isinstance(entry["meets_goal"], bool)


def test_relay_capacity_counts_tokens_and_router_cpu(report):
    capacity = report["relay_capacity"]
    assert capacity["tokens_per_router_cpu_s"] > 0 and capacity["raw_tokens_per_s"] > 0
    for run in capacity["by_tokens_per_chunk"]:
        for relay in (run["router"], run["bare_grpc_aio_relay"]):
            assert relay["num_windows"] == len(relay["per_window"]) > 0
            for window in relay["per_window"]:
                assert window["num_tokens_relayed"] > 0 and window["cpu_s"]["router"] > 0
        assert run["router_over_bare_cpu_per_token"] > 0
    real = capacity["real_decode_workers"]
    assert all(w["num_tokens_relayed"] > 0 and w["cpu_s"]["decode_workers"] > 0 for w in real["per_window"])
    assert "method" in report and set(report["method"]) == {"latency", "relay_capacity", "profile"}


def test_profile_ranks_hot_spots(report):
    profile = report["profile"]
    per_token = profile["stack_samples_per_token"]
    assert per_token["num_samples"] > 0 and per_token["top_self"]
    assert any(row["function"].startswith("router/") for row in per_token["top_inclusive_router_code"])
    assert profile["cprofile_per_token"]["top_self"][0]["calls_per_token"] > 0
    assert profile["stack_samples_per_request"]["num_requests"] > 0
    assert profile["cprofile_per_request"]["top_cumulative_router_code"]
    one_token = report["relay_capacity"]["by_tokens_per_chunk"][0]["one_token_requests"]
    assert one_token["router"]["per_window"][0]["num_streams_finished"] > 0
    assert set(report["goals"]) >= {"latency_goal_met", "relay_goal_met", "worst_added_ms"}
