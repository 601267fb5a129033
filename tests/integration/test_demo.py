"""`tandem demo` as a user runs it (on the tiny model): a routing line per prompt, the estimator
trained once and then reused, and an announced single-tier run when there is no routing data."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest

from tandem import demo, demo_setup

# What the demo prints for each request: "  routed:  tier NAME | difficulty D (estimator E)".
ROUTED = re.compile(r"^  routed:  tier (\S+) \| difficulty ([0-9.]+) \(estimator (\S+)\)$", re.M)


def _write_labels(folder) -> str:
    """RouteLLM-format labels in the MMLU columns: short questions easy, multiple choice hard."""
    rows = [(f"What is {i} plus {i}?", True, True) for i in range(40)]
    rows += [(f"Which of the following statements about f(x) = x^{i} is (are) true?\n"
              f"I. f is increasing.\nII. f has a root.\nA. I only\nB. II only\nC. I and II\n"
              f"D. neither\nAnswer:", False, True) for i in range(40)]
    path = folder / "mmlu_demo.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([demo_setup.PROMPT_COL, demo_setup.WEAK_COL, demo_setup.STRONG_COL])
        writer.writerows(rows)
    return str(folder / "mmlu_*.csv")


@pytest.mark.slow
def test_the_tiny_demo_prints_a_route_per_prompt_and_sends_hard_prompts_to_careful(tmp_path):
    data = _write_labels(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "demo", "--model", "tiny", "--data", data],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TANDEM_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "training the features difficulty estimator" in out
    routes = ROUTED.findall(out)
    assert len(routes) == len(demo.PROMPTS), out
    tiers = [tier for tier, _, _ in routes]
    # The two short questions read like the easy labels, the multiple-choice ones like the hard.
    assert tiers == ["fast", "fast", "careful", "careful"], out
    assert all(estimator == "features" for _, _, estimator in routes)
    assert all(0.0 <= float(difficulty) <= 1.0 for _, difficulty, _ in routes)
    assert out.count("  reason:  difficulty ") == len(demo.PROMPTS), out
    assert "x-tandem-model=fast" in out
    assert "cluster stopped." in out


def test_the_estimator_is_trained_once_then_loaded_from_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    data = _write_labels(tmp_path)
    first = demo_setup.ensure_estimator(data)
    assert first == demo_setup.estimator_dir() and (first / "estimator.json").exists()
    assert "training the features" in capsys.readouterr().out
    written = (first / "estimator.json").stat().st_mtime_ns
    assert demo_setup.ensure_estimator(data) == first
    assert "cached in" in capsys.readouterr().out
    assert (first / "estimator.json").stat().st_mtime_ns == written
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no scratch folder left


def test_without_routing_data_the_demo_announces_a_single_tier(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    setup = demo_setup.build_setup("tiny", str(tmp_path / "absent" / "*.csv"), tmp_path)
    assert "running ONE tier without difficulty routing" in capsys.readouterr().out
    assert setup.config.tiers == [] and "--policy" not in setup.config.router_args
    assert setup.request_model is None and setup.description.startswith("one tier")


def test_the_demo_policy_loads_with_the_real_loader(tmp_path, monkeypatch):
    from tandem.policy.difficulty_policy import load_policy, parse_policy

    policy = parse_policy(demo_setup.demo_policy())
    assert policy.tiers == {demo_setup.FAST_TIER, demo_setup.CAREFUL_TIER}
    assert policy.resolve(0.2).tier == "fast" and policy.resolve(0.2).num_samples == 1
    careful = policy.resolve(0.9)
    assert careful.tier == "careful" and careful.num_samples == demo_setup.CAREFUL_SAMPLES
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    setup = demo_setup.build_setup("tiny", _write_labels(tmp_path), tmp_path)
    policy_file = setup.config.router_args[setup.config.router_args.index("--policy") + 1]
    assert load_policy(policy_file).tiers == policy.tiers
