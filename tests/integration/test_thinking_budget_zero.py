"""max_thinking_tokens=0 means no thinking at all; an unset max_thinking_tokens means no limit.

Checked through the router on both paths (colocated and disaggregated, where the first token comes
from the prefill worker), and on the decode worker itself, which forces the end-of-thinking
delimiter at once when a zero budget meets an open thinking section.
"""

from __future__ import annotations

import pytest

from router.auth import TenantPolicy
from router.request_plan import BudgetDefaults
from router.tenant_limits import within_tenant_limits
from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tests.integration.helpers import decode_stub, router_stub

pytestmark = pytest.mark.slow
THINKING = inference_pb2.TOKEN_SECTION_THINKING
SHORT = "Think about queues."
LONG = " ".join(["Think about the queues at the post office and why they grow."] * 12)


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    # Prompts under 64 uncached tokens are prefilled on the decode worker itself.
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=1, num_decode=1, num_blocks=512,
                                min_disaggregate_tokens=64)
    with LocalCluster(config, tmp_path_factory.mktemp("thinking-zero")) as running:
        yield running


def _stream(cluster, content: str, **budget) -> list[inference_pb2.GenerateResponse]:
    request = inference_pb2.GenerateRequest(
        chat=inference_pb2.ChatInput(messages=[inference_pb2.ChatMessage(role="user", content=content)]),
        sampling=inference_pb2.SamplingParams(temperature=0.0), budget=inference_pb2.Budget(**budget))
    return list(router_stub(cluster.grpc_address).Generate(request, timeout=60))


def _is_disaggregated(responses) -> bool:
    routing = [r.routing for r in responses if r.HasField("routing")]
    assert routing, "no routing info in the stream"
    return routing[0].disaggregated


@pytest.mark.parametrize("content, disaggregated", [(SHORT, False), (LONG, True)],
                         ids=["colocated", "disaggregated"])
def test_a_zero_thinking_budget_yields_no_thinking_tokens(cluster, content, disaggregated):
    responses = _stream(cluster, content, thinking=True, max_thinking_tokens=0, max_tokens=6)
    assert _is_disaggregated(responses) == disaggregated
    sections = [r.section for r in responses if r.token_ids]
    assert sections and THINKING not in sections, sections
    usage = responses[-1].usage
    assert usage.thinking_tokens == 0 and usage.completion_tokens > 0


def test_an_unset_thinking_budget_sets_no_limit(cluster):
    responses = _stream(cluster, SHORT + " Really.", thinking=True, max_tokens=6)
    assert responses[-1].usage.thinking_tokens > 0


def test_the_decode_worker_forces_the_delimiter_at_once_under_a_zero_budget(cluster, reference_engine):
    tokenizer = reference_engine.tokenizer
    prompt = tokenizer.encode("Why do queues grow?") + list(tokenizer.think_start_token_ids)
    decode = decode_stub(cluster.worker_address(cluster.decode[0]))

    def generated(request_id: str, budget: worker_pb2.DecodeBudget) -> list[int]:
        chunks = decode.Decode(worker_pb2.DecodeRequest(
            request_id=request_id, prompt_token_ids=prompt, colocated=True, budget=budget,
            sampling=inference_pb2.SamplingParams(temperature=0.0)), timeout=60)
        return [token for chunk in chunks for token in chunk.token_ids]

    delimiter = list(tokenizer.think_end_token_ids)
    zero = generated("zero-budget", worker_pb2.DecodeBudget(
        max_tokens=6, max_thinking_tokens=0, starts_in_thinking=True))
    unlimited = generated("no-budget", worker_pb2.DecodeBudget(max_tokens=6, starts_in_thinking=True))
    assert zero[:len(delimiter)] == delimiter, zero
    assert unlimited[:len(delimiter)] != delimiter, unlimited


def test_a_tenant_limit_of_zero_thinking_tokens_allows_none():
    request = inference_pb2.GenerateRequest(prompt="Hi")
    _, defaults = within_tenant_limits(request, BudgetDefaults(max_thinking_tokens=512),
                                       TenantPolicy(max_thinking_tokens=0), "no-thinking")
    assert defaults.max_thinking_tokens == 0
    _, defaults = within_tenant_limits(request, BudgetDefaults(max_thinking_tokens=512),
                                       TenantPolicy(max_thinking_tokens=64), "some-thinking")
    assert defaults.max_thinking_tokens == 64
