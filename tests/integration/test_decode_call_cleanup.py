"""A Decode call leaves nothing behind once it is over: finished, or cancelled by its client.

The router closes each Decode call as soon as it has every sample's final chunk, and a client
may go away mid-stream, so the worker's handler is cancelled at any point of its life. The
worker's in-flight count (GetLoad.num_requests_in_flight, which a draining worker waits on) must
return to 0 either way.
"""

from __future__ import annotations

import concurrent.futures
import time

import pytest

from tandem.api.v1 import inference_pb2, worker_pb2
from tests.integration.helpers import decode_stub
from tests.integration.in_process_decode import in_process_decode_worker

NUM_CONCURRENT = 40


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    with in_process_decode_worker(tiny_model_dir) as running:
        yield running


def _load(stub) -> worker_pb2.WorkerLoad:
    return stub.GetLoad(worker_pb2.GetLoadRequest(), timeout=10)


def _wait_until_idle(stub, timeout_s: float = 60.0) -> worker_pb2.WorkerLoad:
    deadline = time.monotonic() + timeout_s
    load = _load(stub)
    while load.num_requests_in_flight and time.monotonic() < deadline:
        time.sleep(0.1)
        load = _load(stub)
    return load


def _decode_then_close(stub, index: int) -> None:
    """Even calls read to the final chunk and then close the call, as the router does; odd
    calls cancel after their first chunk, as a client that went away."""
    is_cancelled_early = index % 2 == 1
    request = worker_pb2.DecodeRequest(
        request_id=f"cleanup-{index}", prompt_token_ids=[3 + (index + i) % 200 for i in range(20)],
        colocated=True, sampling=inference_pb2.SamplingParams(temperature=0.0),
        budget=worker_pb2.DecodeBudget(max_tokens=40 if is_cancelled_early else 8))
    call = stub.Decode(request, timeout=60)
    for chunk in call:
        if is_cancelled_early or chunk.finish_reason:
            call.cancel()
            return


def test_finished_and_cancelled_decode_calls_leave_no_request_in_flight(worker):
    stub = decode_stub(worker.address)
    assert _load(stub).num_requests_in_flight == 0
    for round_index in range(2):
        with concurrent.futures.ThreadPoolExecutor(NUM_CONCURRENT) as pool:
            list(pool.map(lambda i: _decode_then_close(stub, i),
                          range(round_index * NUM_CONCURRENT, (round_index + 1) * NUM_CONCURRENT)))
        load = _wait_until_idle(stub)
        assert load.num_requests_in_flight == 0, f"round {round_index}: {load}"
        assert (load.num_running, load.num_waiting, load.num_kv_blocks_reserved) == (0, 0, 0)
    assert worker.service.num_active == 0
