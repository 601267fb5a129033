"""`tandem router` refuses, at start and with a clear message, tiers and policies that cannot work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

POLICY = """version: 1
bands:
  - {range: [0.0, 1.0], tier: large, thinking: false, answer_budget: 8, temperature: 0.0,
     num_samples: 1, selection: first_finished}
"""


def _router(*flags: str) -> subprocess.CompletedProcess:
    # Without a token file from the environment (other test folders export one), so that
    # --insecure-no-worker-auth is the only worker-auth setting.
    env = {k: v for k, v in os.environ.items() if k != "TANDEM_WORKER_TOKEN_FILE"}
    return subprocess.run([sys.executable, "-m", "tandem.cli", "router", "--insecure-no-worker-auth",
                           "--discovery", "static", *flags], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return str(path)


def test_a_policy_without_an_estimator_is_refused(policy):
    result = _router("--tier", "large=tiny", "--policy", policy)
    assert result.returncode != 0 and "--policy and --estimator go together" in result.stderr


def test_a_policy_routing_to_a_tier_without_a_tokenizer_is_refused(policy, tmp_path):
    result = _router("--tier", "small=tiny", "--policy", policy, "--estimator", str(tmp_path))
    assert result.returncode != 0
    assert "routes to tiers ['large']" in result.stderr and "--tier NAME=FOLDER" in result.stderr


def test_model_and_tier_flags_do_not_mix():
    result = _router("--model", "tiny", "--tier", "large=tiny")
    assert result.returncode != 0 and "not both" in result.stderr
