"""Difficulty-aware routing on a real cluster: the estimator and policy set each request's budget,
and the prefill worker's probe reports a difficulty read off the prompt's hidden state."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.api.v1 import inference_pb2
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tests.integration.helpers import router_stub, train_features_estimator

pytestmark = pytest.mark.slow
HARD = "Prove that the integral of x^2 dx from 0 to 3 equals 9, showing every step of the calculus."
EASY = "Hi"


def _train_probe(tmp_path, hidden_size: int) -> str:
    from tandem.difficulty.probe import ProbeHead

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(200, hidden_size)).astype(np.float32)
    labels = (hidden[:, 0] > 0).astype(np.float32)
    out = tmp_path / "probe"
    ProbeHead.fit(hidden, labels).save(out)
    return str(out)


def _policy(tmp_path, model: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(f"""
version: 1
probe_weight: 0.5
bands:
  - {{range: [0.0, 0.5], tier: {model}, thinking: false, thinking_budget: 0, answer_budget: 4,
     temperature: 0.0, num_samples: 1, selection: first_finished}}
  - {{range: [0.5, 1.0], tier: {model}, thinking: true, thinking_budget: 3, answer_budget: 4,
     temperature: 0.0, num_samples: 1, selection: first_finished}}
""")
    return str(path)


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory, reference_engine):
    tmp = tmp_path_factory.mktemp("difficulty")
    config = LocalClusterConfig(
        model=str(tiny_model_dir), num_prefill=1, num_decode=1, num_blocks=512,
        router_args=["--estimator", train_features_estimator(tmp), "--policy", _policy(tmp, tiny_model_dir.name)],
        prefill_args=["--probe", _train_probe(tmp, reference_engine.model_config.hidden_size)])
    with LocalCluster(config, tmp / "run") as running:
        yield running


def _ask(cluster, text: str):
    request = inference_pb2.GenerateRequest(
        chat=inference_pb2.ChatInput(messages=[inference_pb2.ChatMessage(role="user", content=text)]))
    return list(router_stub(cluster.grpc_address).Generate(request, timeout=60))


def test_hard_prompts_get_thinking_and_easy_ones_a_short_answer(cluster):
    hard, easy = _ask(cluster, HARD), _ask(cluster, EASY)
    hard_routing, easy_routing = hard[0].routing, easy[0].routing
    assert hard_routing.estimator == "features" and easy_routing.estimator == "features"
    assert hard_routing.difficulty > 0.5 > easy_routing.difficulty
    assert hard[-1].usage.thinking_tokens >= 1, "the hard prompt did not think"
    assert hard[-1].usage.completion_tokens <= 3 + 1 + 4
    assert easy[-1].usage.thinking_tokens == 0
    assert easy[-1].usage.completion_tokens <= 4


def test_the_prefill_worker_probe_reports_a_difficulty(cluster):
    routing = _ask(cluster, HARD)[0].routing
    assert routing.disaggregated
    assert 0.0 <= routing.probe_difficulty <= 1.0
