"""Workers that die mid-request: every request ends, and no KV block leaks on the survivors."""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import pytest

from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tests.integration.helpers import (decode_stub, prefill_stub, used_blocks, wait_for_blocks)

pytestmark = pytest.mark.slow
NUM_REQUESTS = 8
PROMPT_LENGTH = 1500


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    # One prefill worker with small steps, so that each prompt takes several steps to compute.
    # The tests run in order on one cluster: the first kills decode-0, the second prefill-0.
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=1, num_decode=2, num_blocks=1024,
                                worker_args=["--max-num-batched-tokens", "256", "--max-num-seqs", "8",
                                             "--kv-timeout", "2"])
    with LocalCluster(config, tmp_path_factory.mktemp("faults")) as running:
        yield running


def _prompt(index: int) -> list[int]:
    return [(7 * index + 13 * position) % 500 + 3 for position in range(PROMPT_LENGTH)]


def _start_transfers(decode, prefill, indices, lease_s=30.0):
    """Reserves on the decode worker and starts the prefills; returns the prefill futures."""
    executor = concurrent.futures.ThreadPoolExecutor(len(indices))
    futures = []
    for index in indices:
        reservation = decode.Reserve(worker_pb2.ReserveRequest(
            request_id=f"r{index}", prompt_token_ids=_prompt(index), lease_seconds=lease_s), timeout=10)
        request = worker_pb2.PrefillRequest(
            request_id=f"r{index}", prompt_token_ids=_prompt(index), reservation=reservation,
            sampling=inference_pb2.SamplingParams(temperature=0.0))
        futures.append(executor.submit(prefill.Prefill, request, timeout=120))
    return futures


def _wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(0.01)


def _outcomes(futures) -> list[str]:
    outcomes = []
    for future in futures:
        try:
            future.result()
            outcomes.append("ok")
        except grpc.RpcError as error:
            outcomes.append(error.code().name)
    return outcomes


def test_decode_worker_killed_mid_transfer(cluster):
    doomed = decode_stub(cluster.worker_address(cluster.decode[0]))
    survivor = decode_stub(cluster.worker_address(cluster.decode[1]))
    prefill = prefill_stub(cluster.worker_address(cluster.prefill[0]))
    prefill_baseline, survivor_baseline = used_blocks(prefill), used_blocks(survivor)

    futures = _start_transfers(doomed, prefill, range(NUM_REQUESTS))
    _wait_until(lambda: used_blocks(prefill) > prefill_baseline)  # prompts are being computed
    cluster.decode[0].process.kill()
    outcomes = _outcomes(futures)

    assert all(o in ("ok", "UNAVAILABLE") for o in outcomes), outcomes
    assert "UNAVAILABLE" in outcomes, "the kill landed after every transfer: no failure was exercised"
    assert wait_for_blocks(prefill, prefill_baseline) == prefill_baseline
    # The surviving pair still works end to end.
    after = _outcomes(_start_transfers(survivor, prefill, [100]))
    assert after == ["ok"]
    survivor.Cancel(worker_pb2.CancelRequest(request_id="r100"), timeout=5)
    assert wait_for_blocks(survivor, survivor_baseline) == survivor_baseline


def test_prefill_worker_killed_mid_prompt(cluster):
    decode = decode_stub(cluster.worker_address(cluster.decode[1]))
    prefill = prefill_stub(cluster.worker_address(cluster.prefill[0]))
    baseline = used_blocks(decode)

    # Fresh prompts (ids 200+): the first test's prompts are in the prefill worker's prefix cache.
    indices = range(200, 200 + NUM_REQUESTS)
    futures = _start_transfers(decode, prefill, indices, lease_s=3.0)
    _wait_until(lambda: used_blocks(prefill) > 0)
    cluster.prefill[0].process.kill()
    outcomes = _outcomes(futures)

    assert all(o in ("ok", "UNAVAILABLE") for o in outcomes), outcomes
    assert "UNAVAILABLE" in outcomes, "every prefill finished before the kill: no failure was exercised"
    # Half the reservations are cancelled by their owner at once; the rest expire with their lease.
    for index in indices[::2]:
        decode.Cancel(worker_pb2.CancelRequest(request_id=f"r{index}", reason="prefill lost"), timeout=30)
    assert wait_for_blocks(decode, baseline) == baseline
