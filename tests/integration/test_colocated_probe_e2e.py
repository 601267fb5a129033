"""A colocated request is scored by the decode worker's probe, and the tighter thinking budget that
the policy gives for that score applies before decoding goes on, as it does after a prefill
worker's probe. The probe here reads every prompt as easy; the estimator finds the prompt hard."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.api.v1 import inference_pb2
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tests.integration.helpers import router_stub
from tests.integration.helpers import train_features_estimator
from tests.integration.test_difficulty_routing_e2e import HARD

pytestmark = pytest.mark.slow
EASY_THINKING, HARD_THINKING = 1, 8


def _easy_probe(tmp_path, hidden_size: int) -> str:
    """A probe head that scores every hidden state far below its calibration: about 0.005."""
    from tandem.difficulty.heads import LinearHead
    from tandem.difficulty.probe import ProbeHead

    head = LinearHead(mean=np.zeros(hidden_size), scale=np.ones(hidden_size),
                      weights=np.zeros((1, hidden_size)), bias=np.array([-10.0]),
                      class_values=np.array([0.0, 1.0]), calibration=np.array([0.4, 0.6]),
                      levels=np.array([0.3, 0.7]))
    out = tmp_path / "probe"
    ProbeHead(head).save(out)
    return str(out)


def _policy(tmp_path, model: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(f"""
version: 1
probe_weight: 1.0
bands:
  - {{range: [0.0, 0.5], tier: {model}, thinking: true, thinking_budget: {EASY_THINKING},
     answer_budget: 3, temperature: 0.0, num_samples: 1, selection: first_finished}}
  - {{range: [0.5, 1.0], tier: {model}, thinking: true, thinking_budget: {HARD_THINKING},
     answer_budget: 3, temperature: 0.0, num_samples: 1, selection: first_finished}}
""")
    return str(path)


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory, reference_engine):
    tmp = tmp_path_factory.mktemp("colocated-probe")
    config = LocalClusterConfig(
        model=str(tiny_model_dir), num_prefill=0, num_decode=1, num_blocks=256,
        router_args=["--estimator", train_features_estimator(tmp), "--policy", _policy(tmp, tiny_model_dir.name)],
        decode_args=["--probe", _easy_probe(tmp, reference_engine.model_config.hidden_size)])
    with LocalCluster(config, tmp / "run") as running:
        yield running


def test_the_decode_workers_probe_tightens_a_colocated_requests_thinking_budget(cluster):
    request = inference_pb2.GenerateRequest(
        chat=inference_pb2.ChatInput(messages=[inference_pb2.ChatMessage(role="user", content=HARD)]))
    responses = list(router_stub(cluster.grpc_address).Generate(request, timeout=60))
    routing, usage = responses[0].routing, responses[-1].usage
    assert not routing.disaggregated
    assert routing.difficulty > 0.5, "the estimator must find the prompt hard for this test"
    assert 0.0 <= routing.probe_difficulty < 0.5
    assert usage.routing.probe_difficulty == pytest.approx(routing.probe_difficulty)
    # The easy band's budget (1, and the forced end-of-thinking delimiter), not the hard one's.
    assert 1 <= usage.thinking_tokens <= EASY_THINKING + 1
