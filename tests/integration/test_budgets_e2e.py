"""Budgets enforced where tokens are made, seen through the router: thinking, deadline, cost, samples."""

from __future__ import annotations

import time

import grpc
import pytest

from tandem.api.v1 import inference_pb2
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tests.integration.helpers import collect, decode_stub, router_stub, used_blocks, wait_for_blocks

pytestmark = pytest.mark.slow
THINKING = inference_pb2.TOKEN_SECTION_THINKING
# Tokens of a generation long enough that a deadline cuts it (the tiny model's context is 2048).
LONG_GENERATION = 1500
KEYS = "tenants:\n  - name: capped\n    api_keys: [sk-capped]\n    policy: {max_tokens: 8, max_samples: 2}\n"


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(KEYS)
    # Prices per 1k tokens: 1.0 for prompt and completion tokens alike.
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=1, num_decode=1, num_blocks=1024,
                                router_args=["--price-prompt", "1", "--price-completion", "1",
                                             "--api-keys", str(keys), "--allow-anonymous"])
    with LocalCluster(config, tmp_path_factory.mktemp("cluster")) as running:
        yield running


def _chat(content: str, **budget) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        chat=inference_pb2.ChatInput(messages=[inference_pb2.ChatMessage(role="user", content=content)]),
        sampling=inference_pb2.SamplingParams(temperature=0.0), budget=inference_pb2.Budget(**budget))


def _stream(cluster, request, api_key=None):
    metadata = [("authorization", f"Bearer {api_key}")] if api_key else None
    return list(router_stub(cluster.grpc_address).Generate(request, metadata=metadata, timeout=300))


@pytest.mark.parametrize("budget", [1, 4, 9])
def test_thinking_budget_forces_the_delimiter_after_exactly_b_tokens(cluster, reference_engine, budget):
    responses = _stream(cluster, _chat("Think about queues.", thinking=True,
                                       max_thinking_tokens=budget, max_tokens=budget + 8))
    tokens = [(t, r.section) for r in responses for t in r.token_ids]
    delimiter = reference_engine.tokenizer.think_end_token_ids[0]
    ids = [t for t, _ in tokens]
    assert delimiter in ids, "no end-of-thinking delimiter in the answer"
    assert ids.index(delimiter) == budget, ids
    assert all(section == THINKING for _, section in tokens[:budget])
    assert len(ids) <= budget + 8
    usage = responses[-1].usage
    assert usage.thinking_tokens >= budget
    assert usage.completion_tokens == len(ids)


def _finish_reasons(responses) -> list[int]:
    return [r.finish_reason for r in responses if r.finish_reason]


def test_deadline_ends_the_request_with_what_it_has(cluster):
    decode = decode_stub(cluster.worker_address(cluster.decode[0]))
    baseline = wait_for_blocks(decode, used_blocks(decode))
    # The same request without a deadline, timed on this machine as loaded as it is now; it also
    # warms the prefix cache and every connection, so the first token comes quickly below.
    started = time.monotonic()
    full = _stream(cluster, _chat("Go on for a long time.", max_tokens=LONG_GENERATION))
    full_s = time.monotonic() - started
    assert _finish_reasons(full) == [inference_pb2.FINISH_REASON_LENGTH], "ended early: nothing to cut"
    # A quarter of that: long past the first token, and the generation would have to run four
    # times faster than just now to finish before it.
    responses = _stream(cluster, _chat("Go on for a long time.", deadline_seconds=full_s / 4,
                                       max_tokens=LONG_GENERATION))
    assert _finish_reasons(responses) == [inference_pb2.FINISH_REASON_DEADLINE]
    assert 0 < responses[-1].usage.completion_tokens < LONG_GENERATION
    assert wait_for_blocks(decode, baseline) == baseline


def test_cost_ceiling_stops_generation_at_the_price_of_the_tokens(cluster):
    probe = _stream(cluster, _chat("Count the cost.", max_tokens=1))
    num_prompt = probe[-1].usage.prompt_tokens
    # Room for exactly 6 generated tokens at 1.0 per 1k tokens.
    max_cost = (num_prompt + 6) / 1000 + 1e-7
    responses = _stream(cluster, _chat("Count the cost.", max_tokens=100, max_cost=max_cost))
    reasons = [r.finish_reason for r in responses if r.finish_reason]
    assert reasons == [inference_pb2.FINISH_REASON_COST]
    assert responses[-1].usage.completion_tokens == 6
    assert responses[-1].usage.cost == pytest.approx((num_prompt + 6) / 1000)


def test_a_cost_ceiling_below_the_prompt_is_refused_up_front(cluster):
    with pytest.raises(grpc.RpcError) as refused:
        _stream(cluster, _chat("Too expensive.", max_cost=1e-6))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_tenant_limits_cap_requests(cluster):
    with pytest.raises(grpc.RpcError) as refused:
        _stream(cluster, _chat("Hi", max_tokens=50), api_key="sk-capped")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit of 8" in refused.value.details()
    responses = _stream(cluster, _chat("Hi"), api_key="sk-capped")
    assert responses[-1].usage.completion_tokens <= 8


def _sampled(content: str, n: int, seed: int, **sampling) -> inference_pb2.GenerateRequest:
    request = _chat(content, max_tokens=10)
    request.sampling.CopyFrom(inference_pb2.SamplingParams(temperature=0.9, seed=seed, n=n, **sampling))
    return request


def _tokens_by_sample(responses) -> dict[int, list[int]]:
    samples: dict[int, list[int]] = {}
    for response in responses:
        if not response.HasField("usage"):
            samples.setdefault(response.sample_index, []).extend(response.token_ids)
    return samples


def test_parallel_samples_equal_independent_requests_with_the_same_seeds(cluster):
    together = _tokens_by_sample(_stream(cluster, _sampled("Name a colour.", n=3, seed=11)))
    assert sorted(together) == [0, 1, 2]
    for index in range(3):
        alone = _tokens_by_sample(_stream(cluster, _sampled("Name a colour.", n=1, seed=11 + index)))
        assert together[index] == alone[0], f"sample {index} differs from seed {11 + index} alone"
    assert len({tuple(t) for t in together.values()}) > 1, "the samples are all alike"


def test_first_finished_returns_one_sample_and_frees_the_others(cluster):
    decode = decode_stub(cluster.worker_address(cluster.decode[0]))
    baseline = wait_for_blocks(decode, used_blocks(decode))
    responses = _stream(cluster, _sampled("Pick one.", n=3, seed=5,
                                          selection=inference_pb2.SELECTION_RULE_FIRST_FINISHED))
    assert set(_tokens_by_sample(responses)) == {0}
    assert responses[-1].usage.num_samples == 3
    assert wait_for_blocks(decode, baseline) == baseline
