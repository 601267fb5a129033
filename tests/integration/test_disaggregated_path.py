"""The disaggregated data path on real processes: 2 prefill + 2 decode workers, KV over UCX (TCP).

Greedy output through prefill -> UCX -> decode must be token-identical to the same request
colocated on a decode worker, and to the engine alone, for a batch of mixed prompt lengths.
"""

from __future__ import annotations

import concurrent.futures
import secrets

import grpc
import pytest

from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tandem.engine.sampling_params import SamplingParams
from tests.integration.helpers import (collect, decode_stub, greedy_request, mixed_prompts,
                                       router_stub, used_blocks, wait_for_blocks)

pytestmark = pytest.mark.slow
NUM_REQUESTS = 32


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=2, num_decode=2,
                                num_blocks=1024)
    with LocalCluster(config, tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def prompts(reference_engine):
    return mixed_prompts(reference_engine.model_config.vocab_size, NUM_REQUESTS, seed=1)


def _max_tokens(index: int) -> int:
    return (4, 11, 23)[index % 3]


def test_32_concurrent_disaggregated_requests_equal_the_engine_alone(cluster, reference_engine, prompts):
    expected = reference_engine.generate(
        prompts, [SamplingParams(temperature=0.0, max_tokens=_max_tokens(i)) for i in range(len(prompts))])
    stub = router_stub(cluster.grpc_address)

    def run(index: int):
        return collect(stub.Generate(greedy_request(prompts[index], _max_tokens(index)), timeout=120))

    with concurrent.futures.ThreadPoolExecutor(NUM_REQUESTS) as pool:
        results = list(pool.map(run, range(NUM_REQUESTS)))
    for index, (token_ids, _, usage, routing) in enumerate(results):
        assert token_ids == expected[index].token_ids, f"request {index} differs"
        assert routing and routing[0].disaggregated, f"request {index} was not disaggregated"
        assert usage.usage.prompt_tokens == len(prompts[index])


def test_disaggregated_equals_colocated_on_the_decode_worker(cluster, prompts):
    router = router_stub(cluster.grpc_address)
    decode = decode_stub(cluster.worker_address(cluster.decode[0]))
    for index in range(0, NUM_REQUESTS, 4):
        disaggregated, _, _, _ = collect(router.Generate(
            greedy_request(prompts[index], _max_tokens(index)), timeout=120))
        request = worker_pb2.DecodeRequest(
            request_id=f"colocated-{index}", prompt_token_ids=prompts[index], colocated=True,
            sampling=inference_pb2.SamplingParams(temperature=0.0),
            budget=worker_pb2.DecodeBudget(max_tokens=_max_tokens(index)))
        colocated = [t for chunk in decode.Decode(request, timeout=60) for t in chunk.token_ids]
        assert disaggregated == colocated


def test_lease_expiry_frees_reserved_blocks(cluster):
    decode = decode_stub(cluster.worker_address(cluster.decode[1]))
    baseline = wait_for_blocks(decode, used_blocks(decode))
    # A lease long enough that the blocks are surely still held when counted on a loaded machine.
    reservation = decode.Reserve(worker_pb2.ReserveRequest(
        request_id="never-prefilled", prompt_token_ids=list(range(5, 105)), lease_seconds=5.0), timeout=30)
    assert len(reservation.block_ids) == 7  # 100 tokens in blocks of 16
    assert used_blocks(decode) >= baseline + 7 - reservation.num_cached_blocks
    assert wait_for_blocks(decode, baseline) == baseline


def test_decode_with_a_wrong_or_reused_token_is_refused(cluster, prompts):
    decode = decode_stub(cluster.worker_address(cluster.decode[0]))
    baseline = wait_for_blocks(decode, used_blocks(decode))
    decode.Reserve(worker_pb2.ReserveRequest(request_id="wrong-token", prompt_token_ids=prompts[0],
                                             lease_seconds=30.0), timeout=5)
    bad = worker_pb2.DecodeRequest(request_id="wrong-token", reservation_token=secrets.token_bytes(32),
                                   first_token_id=5, prompt_token_ids=prompts[0],
                                   sampling=inference_pb2.SamplingParams(temperature=0.0),
                                   budget=worker_pb2.DecodeBudget(max_tokens=3))
    with pytest.raises(grpc.RpcError) as refused:
        list(decode.Decode(bad, timeout=10))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    cancelled = decode.Cancel(worker_pb2.CancelRequest(request_id="wrong-token"), timeout=5)
    assert cancelled.found
    assert wait_for_blocks(decode, baseline) == baseline
    with pytest.raises(grpc.RpcError) as reused:
        list(decode.Decode(bad, timeout=10))
    assert reused.value.code() == grpc.StatusCode.NOT_FOUND


def test_malformed_reservation_is_refused_by_the_prefill_worker(cluster, prompts):
    from tests.integration.helpers import prefill_stub

    prefill = prefill_stub(cluster.worker_address(cluster.prefill[0]))
    baseline = used_blocks(prefill)
    bad = worker_pb2.Reservation(request_id="malformed", kv_address="not-an-address",
                                 block_ids=[1, 2], token=b"short")
    with pytest.raises(grpc.RpcError) as refused:
        prefill.Prefill(worker_pb2.PrefillRequest(request_id="malformed", prompt_token_ids=prompts[0],
                                                  reservation=bad), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert wait_for_blocks(prefill, baseline) == baseline
