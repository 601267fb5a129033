"""KV integrity on real processes: a reservation that does not fit its prompt fails alone on the
prefill worker, prefills short of KV blocks still deliver the prompt's real KV, and the decode
worker's canary sweep (--debug-kv-canary) is readable through its metrics endpoint."""

from __future__ import annotations

import concurrent.futures
import socket
import time
import urllib.request

import grpc
import pytest

from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.engine.sampling_params import SamplingParams
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tests.integration.helpers import (collect, decode_stub, greedy_request, prefill_stub, router_stub,
                                       used_blocks, wait_for_blocks)

pytestmark = pytest.mark.slow
# Room for about two of the concurrent prompts below at once: the others wait for KV blocks.
PREFILL_BLOCKS = 24
NUM_NEW = 6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory, metrics_port):
    config = LocalClusterConfig(
        model=str(tiny_model_dir), num_prefill=1, num_decode=1, num_blocks=512,
        worker_args=["--max-num-batched-tokens", "64", "--max-num-seqs", "8"],
        prefill_args=["--num-blocks", str(PREFILL_BLOCKS)],
        decode_args=["--debug-kv-canary", "--metrics-port", str(metrics_port)])
    with LocalCluster(config, tmp_path_factory.mktemp("kv-integrity")) as running:
        yield running


def _prompt(seed: int, length: int) -> list[int]:
    return [(seed * 31 + position * 17) % 900 + 3 for position in range(length)]


def _decode(decode, request_id: str, prompt: list[int], first_token_id: int, token: bytes) -> list[int]:
    request = worker_pb2.DecodeRequest(
        request_id=request_id, prompt_token_ids=prompt, first_token_id=first_token_id,
        reservation_token=token, sampling=inference_pb2.SamplingParams(temperature=0.0),
        budget=worker_pb2.DecodeBudget(max_tokens=NUM_NEW))
    return [first_token_id] + [t for chunk in decode.Decode(request, timeout=60) for t in chunk.token_ids]


def test_a_reservation_that_does_not_fit_its_prompt_fails_alone(cluster, reference_engine):
    decode = decode_stub(cluster.worker_address(cluster.decode[0]))
    prefill = prefill_stub(cluster.worker_address(cluster.prefill[0]))
    good_prompt, bad_prompt = _prompt(1, 300), _prompt(2, 100)
    good = decode.Reserve(worker_pb2.ReserveRequest(request_id="fits", prompt_token_ids=good_prompt,
                                                    lease_seconds=60), timeout=10)
    # A well-formed reservation, but made for a 40-token prompt: 3 blocks for a 100-token prompt.
    short = decode.Reserve(worker_pb2.ReserveRequest(request_id="short", prompt_token_ids=bad_prompt[:40],
                                                     lease_seconds=60), timeout=10)
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        good_call = executor.submit(prefill.Prefill, worker_pb2.PrefillRequest(
            request_id="fits", prompt_token_ids=good_prompt, reservation=good,
            sampling=inference_pb2.SamplingParams(temperature=0.0)), timeout=120)
        with pytest.raises(grpc.RpcError) as refused:
            prefill.Prefill(worker_pb2.PrefillRequest(
                request_id="short", prompt_token_ids=bad_prompt, reservation=short,
                sampling=inference_pb2.SamplingParams(temperature=0.0)), timeout=60)
        first = good_call.result()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "7 blocks" in refused.value.details() and "3" in refused.value.details()
    tokens = _decode(decode, "fits", good_prompt, first.first_token_id, good.token)
    expected = reference_engine.generate([good_prompt], SamplingParams(temperature=0.0, max_tokens=NUM_NEW))
    assert tokens == expected[0].token_ids
    assert decode.Cancel(worker_pb2.CancelRequest(request_id="short"), timeout=5).found
    assert wait_for_blocks(prefill, 0) == 0


def test_prefills_short_of_kv_blocks_deliver_the_prompts_real_kv(cluster, reference_engine):
    router = router_stub(cluster.grpc_address)
    prompts = [_prompt(10 + index, 120 + 30 * (index % 3)) for index in range(6)]  # 8 to 10 blocks each
    params = SamplingParams(temperature=0.0, max_tokens=NUM_NEW)
    expected = [c.token_ids for c in reference_engine.generate(prompts, params)]
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as executor:
        calls = [executor.submit(lambda p=p: collect(router.Generate(greedy_request(p, NUM_NEW), timeout=180)))
                 for p in prompts]
        outputs = [call.result()[0] for call in calls]
    assert outputs == expected
    prefill = prefill_stub(cluster.worker_address(cluster.prefill[0]))
    assert wait_for_blocks(prefill, 0) == 0


def test_the_decode_workers_canary_sweep_is_readable_through_its_metrics(cluster, metrics_port):
    decode = decode_stub(cluster.worker_address(cluster.decode[0]))
    baseline = wait_for_blocks(decode, used_blocks(decode))
    decode.Reserve(worker_pb2.ReserveRequest(request_id="dropped", prompt_token_ids=_prompt(3, 50),
                                             lease_seconds=60), timeout=10)
    decode.Cancel(worker_pb2.CancelRequest(request_id="dropped"), timeout=5)
    assert wait_for_blocks(decode, baseline) == baseline
    decode.GetLoad(worker_pb2.GetLoadRequest(), timeout=10)  # sweeps every free block
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
                exposition = reply.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert "\ntandem_kv_canary_violations_total 0.0\n" in exposition
