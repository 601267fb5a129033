"""benchmarks/test_time_compute.py: its task generator, answer extractor, token accounting and a smoke run."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

from benchmarks.arithmetic_tasks import extract_answer, make_problems

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "test_time_compute.py"
_STEP = re.compile(r"(buys|finds|gives \w+|gives away|loses|sells) (\d+)")


def test_problems_are_seeded_and_their_answers_follow_the_story():
    problems = make_problems(18, seed=3)
    assert problems == make_problems(18, seed=3) and problems != make_problems(18, seed=4)
    assert sorted({p.size for p in problems}) == list(range(1, 10))
    for problem in problems:
        total = int(re.search(r"has (\d+)", problem.text).group(1))
        steps = _STEP.findall(problem.text)
        assert len(steps) == problem.num_ops
        for verb, amount in steps:
            total += -int(amount) if verb in ("gives away", "loses", "sells") else int(amount)
            assert total >= 0
        assert total == problem.answer


def test_extractor_reads_the_last_integer_after_thinking():
    assert extract_answer("<think>it is 7</think> 12 + 3 = 15. The answer is 15.") == 15
    assert extract_answer("so -4 apples") == -4
    assert extract_answer("<think>42</think> no idea") is None


def test_quick_run_prints_every_strategy_and_writes_the_plot(tmp_path):
    plot = tmp_path / "ttc.png"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--model", "tiny", "--plot", str(plot)],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout)
    parameters = report["parameters"]
    assert parameters["num_problems"] == 9 and parameters["num_samples"] == 3
    k, max_tokens = parameters["num_samples"], parameters["max_tokens"]
    for key in ("greedy", "majority_at_k", "short_m_at_k"):
        assert 0.0 <= report[key]["accuracy"] <= 1.0
        assert 0 < report[key]["mean_tokens"] <= k * max_tokens
    assert [p["k"] for p in report["majority_curve"]] == list(range(1, k + 1))
    assert [p["m"] for p in report["short_m_curve"]] == list(range(1, k + 1))
    # Majority of all k pays for every sample; short-m@k stops the rest at the m-th finish.
    assert report["short_m_at_k"]["mean_tokens"] <= report["majority_at_k"]["mean_tokens"]
    assert {"vs_majority", "vs_greedy_or_majority"} <= set(report["short_m_at_k"])
    # The tiny random model answers nothing right, so the estimator may have one label class.
    policy = report["policy"]
    assert "skipped" in policy or {"accuracy", "mean_tokens", "vs_majority"} <= set(policy)
    assert plot.stat().st_size > 0
