"""Hostile calls to a real decode worker process: each gets a clear status and changes nothing else.

Bad request ids and leases are refused before any block is reserved; a Decode that fails (wrong
token, or a colocated call on an id that is reserved) leaves the reservation to its owner, who can
still claim it and decode exactly what an undisturbed request would.
"""

from __future__ import annotations

import math

import grpc
import pytest

from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tests.integration.helpers import decode_stub, prefill_stub, used_blocks, wait_for_blocks

pytestmark = pytest.mark.slow
PROMPT = [(11 * position) % 400 + 3 for position in range(70)]
GREEDY = inference_pb2.SamplingParams(temperature=0.0)
NUM_TOKENS = 5


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=1, num_decode=1, num_blocks=256)
    with LocalCluster(config, tmp_path_factory.mktemp("hostile")) as running:
        yield running


@pytest.fixture
def decode(cluster):
    return decode_stub(cluster.worker_address(cluster.decode[0]))


@pytest.fixture
def prefill(cluster):
    return prefill_stub(cluster.worker_address(cluster.prefill[0]))


def _refusal(call) -> grpc.RpcError:
    """The error a call (a function of no arguments that makes the RPC) ends with."""
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


def _decode_request(request_id: str, **fields) -> worker_pb2.DecodeRequest:
    return worker_pb2.DecodeRequest(request_id=request_id, prompt_token_ids=PROMPT, sampling=GREEDY,
                                    budget=worker_pb2.DecodeBudget(max_tokens=NUM_TOKENS), **fields)


def _colocated_tokens(decode, request_id: str) -> list[int]:
    chunks = list(decode.Decode(_decode_request(request_id, colocated=True), timeout=60))
    assert chunks[-1].finish_reason, chunks
    return [token for chunk in chunks for token in chunk.token_ids]


def _prefill_and_claim(decode, prefill, reservation) -> list[int]:
    """Pushes the prompt's KV into the reservation, claims it, and returns every generated token."""
    first = prefill.Prefill(worker_pb2.PrefillRequest(
        request_id=reservation.request_id, prompt_token_ids=PROMPT, sampling=GREEDY,
        reservation=reservation), timeout=60)
    chunks = list(decode.Decode(_decode_request(
        reservation.request_id, reservation_token=reservation.token,
        first_token_id=first.first_token_id), timeout=60))
    assert chunks[-1].finish_reason, chunks
    return [first.first_token_id] + [token for chunk in chunks for token in chunk.token_ids]


@pytest.mark.parametrize("request_id", ["r" * 65, "x" * 100_000, "", "x#1", "two words", "é" * 20],
                         ids=["65-bytes", "100k-chars", "empty", "hash-digit", "space", "non-ascii"])
def test_a_bad_request_id_is_refused_before_any_state_changes(decode, request_id):
    baseline = wait_for_blocks(decode, used_blocks(decode))
    calls = {
        "Reserve": lambda: decode.Reserve(worker_pb2.ReserveRequest(
            request_id=request_id, prompt_token_ids=PROMPT, lease_seconds=30), timeout=20),
        "colocated Decode": lambda: list(decode.Decode(_decode_request(request_id, colocated=True),
                                                       timeout=20)),
        "Decode": lambda: list(decode.Decode(_decode_request(
            request_id, reservation_token=b"\0" * 16, first_token_id=5), timeout=20)),
        "Cancel": lambda: decode.Cancel(worker_pb2.CancelRequest(request_id=request_id), timeout=20),
    }
    for name, call in calls.items():
        error = _refusal(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error)
        assert "request_id" in error.details() and len(error.details()) < 500
    assert used_blocks(decode) == baseline
    assert len(_colocated_tokens(decode, "after-bad-id")) == NUM_TOKENS
    assert wait_for_blocks(decode, baseline) == baseline


def test_a_huge_sample_count_is_refused_before_any_state_changes(decode):
    baseline = wait_for_blocks(decode, used_blocks(decode))
    request = _decode_request("many-samples", colocated=True)
    request.sampling.n = 2**31
    error = _refusal(lambda: list(decode.Decode(request, timeout=20)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "sampling.n" in error.details()
    assert used_blocks(decode) == baseline
    assert len(_colocated_tokens(decode, "many-samples")) == NUM_TOKENS


@pytest.mark.parametrize("lease_seconds", [math.inf, math.nan, -1.0, 1e9])
def test_a_lease_that_is_not_finite_positive_and_bounded_is_refused(decode, lease_seconds):
    baseline = wait_for_blocks(decode, used_blocks(decode))
    error = _refusal(lambda: decode.Reserve(worker_pb2.ReserveRequest(
        request_id="bad-lease", prompt_token_ids=PROMPT, lease_seconds=lease_seconds), timeout=20))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "lease_seconds" in error.details()
    assert wait_for_blocks(decode, baseline, timeout_s=2) == baseline
    assert not decode.Cancel(worker_pb2.CancelRequest(request_id="bad-lease"), timeout=10).found


def test_a_wrong_token_leaves_the_reservation_to_its_owner(decode, prefill):
    expected = _colocated_tokens(decode, "wrong-token-reference")
    baseline = wait_for_blocks(decode, used_blocks(decode))
    reservation = decode.Reserve(worker_pb2.ReserveRequest(
        request_id="wrong-token", prompt_token_ids=PROMPT, lease_seconds=60), timeout=20)
    held = used_blocks(decode)
    assert held > baseline
    forged = bytes(byte ^ 0xFF for byte in reservation.token)
    error = _refusal(lambda: list(decode.Decode(_decode_request(
        "wrong-token", reservation_token=forged, first_token_id=5), timeout=20)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert used_blocks(decode) == held
    assert _prefill_and_claim(decode, prefill, reservation) == expected
    assert wait_for_blocks(decode, baseline) == baseline


def test_a_colocated_decode_cannot_take_an_id_that_is_reserved(decode, prefill):
    expected = _colocated_tokens(decode, "reserved-reference")
    baseline = wait_for_blocks(decode, used_blocks(decode))
    reservation = decode.Reserve(worker_pb2.ReserveRequest(
        request_id="reserved", prompt_token_ids=PROMPT, lease_seconds=60), timeout=20)
    held = used_blocks(decode)
    error = _refusal(lambda: list(decode.Decode(_decode_request("reserved", colocated=True),
                                                timeout=20)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
    assert used_blocks(decode) == held
    assert _prefill_and_claim(decode, prefill, reservation) == expected
    assert wait_for_blocks(decode, baseline) == baseline
