"""Failures inside a decode worker: nothing leaks, nothing is dropped silently.

The worker runs in the test's process (real engine, service and gRPC server, called over gRPC)
so that a test can break a part of it, hold its engine thread, or read its metrics.
"""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

import decode_worker.chunks as decode_chunks
from decode_worker.samples import SampleGroup
from decode_worker.service import DecodeService
from tandem.api.v1 import inference_pb2, worker_pb2
from tests.integration.helpers import decode_stub, used_blocks, wait_for_blocks
from tests.integration.in_process_decode import dropped_errors, in_process_decode_worker

PROMPT = [(7 * position) % 300 + 3 for position in range(40)]


class ObservedDecodeService(DecodeService):
    """A DecodeService that records when a Reserve's caller went away (its handler was cancelled)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.reserve_cancelled = threading.Event()

    async def Reserve(self, request, context):
        try:
            return await super().Reserve(request, context)
        except asyncio.CancelledError:
            self.reserve_cancelled.set()
            raise


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    with in_process_decode_worker(tiny_model_dir, ObservedDecodeService) as running:
        yield running


@pytest.fixture
def stub(worker):
    return decode_stub(worker.address)


def _reserve(request_id: str) -> worker_pb2.ReserveRequest:
    return worker_pb2.ReserveRequest(request_id=request_id, prompt_token_ids=PROMPT, lease_seconds=60)


def _wait_until(condition, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_a_failure_after_reserving_rolls_the_reservation_back(worker, stub, monkeypatch):
    baseline = wait_for_blocks(stub, used_blocks(stub))

    def broken_register(*args, **kwargs):
        raise RuntimeError("grant table is broken")

    monkeypatch.setattr(worker.service.grants, "register", broken_register)
    with pytest.raises(grpc.RpcError) as failed:
        stub.Reserve(_reserve("broken-register"), timeout=20)
    assert failed.value.code() == grpc.StatusCode.INTERNAL, failed.value
    assert "grant table is broken" in failed.value.details()
    assert used_blocks(stub) == baseline
    monkeypatch.undo()
    reservation = stub.Reserve(_reserve("broken-register"), timeout=20)
    assert used_blocks(stub) > baseline and len(reservation.token) == 16
    assert stub.Cancel(worker_pb2.CancelRequest(request_id="broken-register"), timeout=20).found
    assert wait_for_blocks(stub, baseline) == baseline


def test_a_reserve_whose_caller_is_gone_gives_its_blocks_back(worker, stub, monkeypatch):
    baseline = wait_for_blocks(stub, used_blocks(stub))
    engine = worker.service.engine
    real_reserve, entered, go = engine.reserve, threading.Event(), threading.Event()

    def held_reserve(*args):
        entered.set()
        go.wait(timeout=60)
        return real_reserve(*args)

    monkeypatch.setattr(engine, "reserve", held_reserve)
    call = stub.Reserve.future(_reserve("caller-gone"), timeout=60)
    try:
        assert entered.wait(timeout=30), "the engine thread never ran the reserve"
        call.cancel()
        assert worker.service.reserve_cancelled.wait(timeout=30), "the server never saw the cancel"
    finally:
        go.set()
    assert wait_for_blocks(stub, baseline) == baseline
    monkeypatch.undo()
    assert len(stub.Reserve(_reserve("caller-gone"), timeout=20).token) == 16
    stub.Cancel(worker_pb2.CancelRequest(request_id="caller-gone"), timeout=20)
    assert wait_for_blocks(stub, baseline) == baseline


def test_an_unknown_finish_reason_is_an_error_that_is_counted(worker, stub, monkeypatch):
    baseline = wait_for_blocks(stub, used_blocks(stub))
    before = dropped_errors("decode_worker", "unknown_finish_reason")
    # As if the engine had gained a finish reason that this worker does not know.
    monkeypatch.setattr(decode_chunks, "FINISH_REASONS", {})
    request = worker_pb2.DecodeRequest(
        request_id="unknown-reason", prompt_token_ids=PROMPT, colocated=True,
        sampling=inference_pb2.SamplingParams(temperature=0.0), budget=worker_pb2.DecodeBudget(max_tokens=3))
    with pytest.raises(grpc.RpcError) as failed:
        chunks = list(stub.Decode(request, timeout=30))
        pytest.fail(f"the stream ended normally: {[c.finish_reason for c in chunks]}")
    assert failed.value.code() == grpc.StatusCode.INTERNAL, failed.value
    assert "finish reason" in failed.value.details()
    assert dropped_errors("decode_worker", "unknown_finish_reason") == before + 1
    assert wait_for_blocks(stub, baseline) == baseline


def test_a_grant_release_that_fails_is_logged_and_counted(worker, stub, monkeypatch):
    baseline = wait_for_blocks(stub, used_blocks(stub))
    before = dropped_errors("decode_worker", "grant_release_failed")
    stub.Reserve(_reserve("release-fails"), timeout=20)

    def broken_release(request_id):
        raise RuntimeError(f"cannot release {request_id}")

    monkeypatch.setattr(worker.service.engine, "release", broken_release)
    assert stub.Cancel(worker_pb2.CancelRequest(request_id="release-fails"), timeout=20).found
    assert _wait_until(lambda: dropped_errors("decode_worker", "grant_release_failed") == before + 1)
    monkeypatch.undo()
    assert used_blocks(stub) > baseline  # the grant is gone but the engine still holds its blocks
    worker.on_engine(worker.service.engine.release, "release-fails")
    assert wait_for_blocks(stub, baseline) == baseline


def test_sample_indices_come_from_a_map_not_from_parsing_ids():
    group = SampleGroup("x#1", 3)
    engine_ids = [group.engine_id(index) for index in range(3)]
    assert len(set(engine_ids)) == 3
    assert [group.sample_index(engine_id) for engine_id in engine_ids] == [0, 1, 2]
    with pytest.raises(KeyError):
        group.sample_index("x#7")
