"""One router over two tiers (two tiny models, each with its own workers): the estimator and the
policy send easy prompts to one tier and hard ones to the other, through the `openai` client and
gRPC; `auto`, the deployment's name, a pinned model, `n` absent and explicit; and the response says
which tier served it, at what difficulty, by which estimator."""

from __future__ import annotations

import json

import grpc
import pytest

from tandem.api.v1 import inference_pb2, inference_pb2_grpc
from tandem.local_cluster import LocalCluster, LocalClusterConfig, TierConfig
from tests.integration.helpers import train_features_estimator

pytestmark = pytest.mark.slow
HARD = "Prove that the integral of x^2 dx from 0 to 3 equals 9, showing every step of the calculus."
EASY = "What is 2 plus 2?"
HARD_SAMPLES = 3
POLICY = f"""
version: 1
bands:
  - {{range: [0.0, 0.5], tier: small, thinking: false, answer_budget: 4, temperature: 0.0,
     num_samples: 1, selection: first_finished}}
  - {{range: [0.5, 1.0], tier: large, thinking: true, thinking_budget: 3, answer_budget: 4,
     temperature: 0.8, num_samples: {HARD_SAMPLES}, selection: majority_of_first_m, majority_m: 2}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from tandem.engine.tiny_model import make_tiny_model

    tmp = tmp_path_factory.mktemp("tiers")
    # Two different models: a Llama without a thinking mode, a wider Qwen2 with one.
    small = make_tiny_model(tmp / "small-model", arch="llama", seed=3)
    (small / "tandem.json").write_text(json.dumps({"think_start": None, "think_end": None}))
    large = make_tiny_model(tmp / "large-model", arch="qwen2", seed=4, hidden_size=96,
                            num_attention_heads=6, num_key_value_heads=2)
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    config = LocalClusterConfig(
        tiers=[TierConfig("small", str(small), num_prefill=1, num_decode=1),
               TierConfig("large", str(large), num_prefill=0, num_decode=1)],
        num_blocks=256, router_args=["--estimator", train_features_estimator(tmp), "--policy", str(policy),
                                     "--deployment-name", "assistant"])
    with LocalCluster(config, tmp / "run") as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster):
    from openai import OpenAI

    return OpenAI(base_url=cluster.http_url, api_key="local", max_retries=0, timeout=120)


def _chat(client, text: str, **fields):
    raw = client.chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": text}], **fields)
    return raw.headers, raw.parse()


def test_both_tiers_are_listed_from_discovery(client):
    assert sorted(model.id for model in client.models.list().data) == ["large", "small"]


def test_auto_sends_the_easy_prompt_to_the_small_tier_and_the_hard_one_to_the_large(client):
    easy_headers, easy = _chat(client, EASY, model="auto")
    hard_headers, hard = _chat(client, HARD, model="auto")
    assert easy.model == easy_headers["x-tandem-model"] == "small"
    assert hard.model == hard_headers["x-tandem-model"] == "large"
    assert float(easy_headers["x-tandem-difficulty"]) < 0.5 < float(hard_headers["x-tandem-difficulty"])
    assert easy_headers["x-tandem-estimator"] == hard_headers["x-tandem-estimator"] == "features"
    # The usage says the same, with the policy's reason.
    easy_routing, hard_routing = easy.usage.model_extra["routing"], hard.usage.model_extra["routing"]
    assert (easy_routing["model"], hard_routing["model"]) == ("small", "large")
    assert easy_routing["estimator"] == "features" and "band 0" in easy_routing["reason"]
    assert hard_routing["difficulty"] == pytest.approx(float(hard_headers["x-tandem-difficulty"]), abs=1e-3)
    # n absent: the hard band's samples, reduced to one answer by its selection rule.
    assert hard.usage.model_extra["num_samples"] == HARD_SAMPLES and len(hard.choices) == 1
    assert easy.usage.model_extra["num_samples"] == 1
    assert easy.usage.completion_tokens <= 4


def test_the_deployment_name_routes_like_auto(client):
    headers, reply = _chat(client, HARD, model="assistant")
    assert reply.model == headers["x-tandem-model"] == "large"


def test_an_explicit_n_is_honoured(client):
    _, reply = _chat(client, HARD, model="auto", n=2)
    assert reply.model == "large" and len(reply.choices) == 2
    assert reply.usage.model_extra["num_samples"] == 2


def test_a_pinned_model_without_thinking_gets_the_hard_bands_budgets_without_thinking(client):
    headers, reply = _chat(client, HARD, model="small")
    assert reply.model == headers["x-tandem-model"] == "small"
    assert float(headers["x-tandem-difficulty"]) > 0.5
    usage = reply.usage
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert usage.model_extra["num_samples"] == HARD_SAMPLES
    assert "named by the request" in usage.model_extra["routing"]["reason"]


def test_a_stream_carries_the_routing_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": EASY}], stream=True,
        stream_options={"include_usage": True})
    assert raw.headers["x-tandem-model"] == "small"
    assert raw.headers["x-tandem-estimator"] == "features"
    chunks = list(raw.parse())
    assert chunks[-1].usage.model_extra["routing"]["model"] == "small"


def _generate(cluster, text: str, **fields) -> list[inference_pb2.GenerateResponse]:
    request = inference_pb2.GenerateRequest(
        chat=inference_pb2.ChatInput(messages=[inference_pb2.ChatMessage(role="user", content=text)]),
        **fields)
    with grpc.insecure_channel(cluster.grpc_address) as channel:
        return list(inference_pb2_grpc.InferenceStub(channel).Generate(request, timeout=120))


def test_grpc_routes_by_difficulty_and_tells_unset_n_from_one(cluster):
    easy, hard = _generate(cluster, EASY), _generate(cluster, HARD)
    assert easy[0].routing.model == easy[-1].usage.routing.model == "small"
    assert hard[0].routing.model == hard[-1].usage.routing.model == "large"
    assert hard[-1].usage.routing.estimator == "features"
    assert hard[-1].usage.routing.difficulty > 0.5 > easy[-1].usage.routing.difficulty
    assert hard[-1].usage.num_samples == HARD_SAMPLES
    one = _generate(cluster, HARD, sampling=inference_pb2.SamplingParams(n=1))
    assert one[-1].usage.num_samples == 1 and one[-1].usage.routing.model == "large"


def test_grpc_pins_a_model(cluster):
    pinned = _generate(cluster, EASY, model="large")
    assert pinned[-1].usage.routing.model == "large"
    assert pinned[-1].usage.routing.difficulty < 0.5
    assert pinned[-1].usage.thinking_tokens == 0  # the easy band does not think
