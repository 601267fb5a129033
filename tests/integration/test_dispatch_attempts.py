"""Dispatch through the router: worker-side ids, retries that avoid a refusing worker, and the
finish reason of one-token requests, on both request paths and both client APIs.

Decode workers have small caches (64 blocks; the prefill worker has more), so that one worker can be made too full for a
request that still fits on the other. Prompts shorter than 64 tokens are prefilled on the decode
worker (colocated); longer ones go through the prefill worker (disaggregated).
"""

from __future__ import annotations

import concurrent.futures

import grpc
import pytest

from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.engine.sampling_params import SamplingParams
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tests.integration.helpers import (collect, decode_stub, greedy_request, router_stub,
                                       used_blocks, wait_for_blocks)

pytestmark = pytest.mark.slow
NUM_BLOCKS = 64
BLOCK_SIZE = 16
LENGTH = inference_pb2.FINISH_REASON_LENGTH
STOP = inference_pb2.FINISH_REASON_STOP


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=1, num_decode=2,
                                num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                                min_disaggregate_tokens=64, prefill_args=["--num-blocks", "512"])
    with LocalCluster(config, tmp_path_factory.mktemp("dispatch")) as running:
        yield running


@pytest.fixture
def decoders(cluster):
    """Stubs of both decode workers; checks that every block is given back after the test."""
    stubs = [decode_stub(cluster.worker_address(child)) for child in cluster.decode]
    baselines = [wait_for_blocks(stub, used_blocks(stub)) for stub in stubs]
    yield stubs
    assert [wait_for_blocks(stub, base) for stub, base in zip(stubs, baselines)] == baselines


def _finish_reasons(responses) -> dict[int, int]:
    return {r.sample_index: r.finish_reason for r in responses if r.finish_reason}


def test_requests_with_the_same_client_id_run_apart_and_cancel_apart(cluster, decoders, reference_engine):
    # The same prompt twice: prefix locality sends both to the same decode worker.
    prompt = list(range(100, 180))
    request = greedy_request(prompt, 300)
    request.request_id = "shared-client-id"
    expected = reference_engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=300))[0]
    stub = router_stub(cluster.grpc_address)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda _: collect(stub.Generate(request, timeout=120)), range(2)))
    assert [token_ids for token_ids, *_ in both] == [expected.token_ids] * 2

    doomed = stub.Generate(request, timeout=120)
    survivor = stub.Generate(request, timeout=120)
    started = [next(doomed), next(survivor)]
    assert all(response.token_ids for response in started)

    doomed.cancel()
    token_ids, text, usage, _ = collect([started[1], *survivor])

    assert doomed.code() == grpc.StatusCode.CANCELLED
    assert token_ids == expected.token_ids
    assert usage.request_id == "shared-client-id"
    assert usage.usage.completion_tokens == len(expected.token_ids)


def test_the_client_request_id_is_echoed_as_the_openai_id(cluster, decoders):
    from openai import OpenAI

    client = OpenAI(base_url=cluster.http_url, api_key="anonymous", max_retries=0)
    reply = client.completions.create(model=client.models.list().data[0].id, prompt="Hello there",
                                      max_tokens=3, temperature=0,
                                      extra_body={"request_id": "shared-client-id"})
    assert reply.id == "cmpl-shared-client-id"


def test_a_retry_avoids_the_decode_worker_that_refused_for_lack_of_blocks(cluster, decoders):
    stub = router_stub(cluster.grpc_address)
    warm = list(range(200, 232))
    collect(stub.Generate(greedy_request(warm, 2), timeout=60))
    # The worker that served `warm` has its blocks cached: the router will prefer it again.
    probes = [decoder.Reserve(worker_pb2.ReserveRequest(request_id="probe", prompt_token_ids=warm,
                                                        lease_seconds=30), timeout=10)
              for decoder in decoders]
    for decoder in decoders:
        decoder.Cancel(worker_pb2.CancelRequest(request_id="probe"), timeout=10)
    [preferred] = [d for d, probe in zip(decoders, probes) if probe.num_cached_blocks > 0]
    # A held reservation of 4 blocks leaves it 60 free blocks: lightly loaded, but too full for a
    # prompt of 62 blocks that fits on the other worker.
    held = preferred.Reserve(worker_pb2.ReserveRequest(
        request_id="held", prompt_token_ids=list(range(300, 364)), lease_seconds=120), timeout=10)
    assert len(held.block_ids) == 4
    try:
        prompt = warm + [(7 * i) % 900 + 3 for i in range(980 - len(warm))]
        token_ids, _, usage, _ = collect(stub.Generate(greedy_request(prompt, 4), timeout=120))
        assert len(token_ids) == usage.usage.completion_tokens > 0
    finally:
        preferred.Cancel(worker_pb2.CancelRequest(request_id="held"), timeout=10)


@pytest.mark.parametrize("prompt_length, is_disaggregated", [(20, False), (100, True)],
                         ids=["colocated", "disaggregated"])
def test_one_token_requests_finish_with_length_or_stop_over_grpc(cluster, decoders, prompt_length,
                                                                 is_disaggregated):
    stub = router_stub(cluster.grpc_address)
    prompt = list(range(500, 500 + prompt_length))
    responses = list(stub.Generate(greedy_request(prompt, 1), timeout=60))
    _, _, usage, routing = collect(responses)
    assert routing[0].disaggregated is is_disaggregated
    assert _finish_reasons(responses) == {0: LENGTH}
    assert usage.usage.completion_tokens == 1

    first_token = responses[0].token_ids[0]
    stopped = list(stub.Generate(greedy_request(prompt, 1, stop_token_ids=[first_token]), timeout=60))
    assert _finish_reasons(stopped) == {0: STOP}

    sampled = greedy_request(prompt, 1)
    sampled.sampling.temperature, sampled.sampling.seed, sampled.sampling.n = 0.9, 3, 3
    assert _finish_reasons(list(stub.Generate(sampled, timeout=60))) == {0: LENGTH, 1: LENGTH, 2: LENGTH}


@pytest.mark.parametrize("num_words", [4, 80], ids=["colocated", "disaggregated"])
def test_one_token_requests_finish_with_length_over_http(cluster, decoders, num_words):
    from openai import OpenAI

    client = OpenAI(base_url=cluster.http_url, api_key="anonymous", max_retries=0)
    model = client.models.list().data[0].id
    prompt = " ".join(["queue"] * num_words)
    reply = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0)
    assert reply.routing["disaggregated"] is (num_words > 4)
    assert [choice.finish_reason for choice in reply.choices] == ["length"]
    reply = client.completions.create(model=model, prompt=prompt, max_tokens=1, n=2, temperature=0.9,
                                      seed=5)
    assert [choice.finish_reason for choice in reply.choices] == ["length", "length"]
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=1, temperature=0,
        stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] \
        == ["length"]
