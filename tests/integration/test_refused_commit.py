"""A KV commit that the decode worker refuses because the reservation is gone is not the prefill
worker's fault: the prefill worker says so with FAILED_PRECONDITION naming the decode worker, and
the router retries the request without marking the prefill worker failed.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from router.worker_calls import ReservationGone, WorkerCalls
from router.worker_pool import WorkerPool
from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tests.integration.helpers import decode_stub, prefill_stub, worker_token

pytestmark = pytest.mark.slow
PROMPT = [(11 * position) % 500 + 3 for position in range(40)]


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=1, num_decode=1, num_blocks=256)
    with LocalCluster(config, tmp_path_factory.mktemp("refused-commit")) as running:
        yield running


def _cancelled_reservation(cluster, request_id: str) -> worker_pb2.Reservation:
    """A reservation whose grant the decode worker has already ended (as an expired lease would)."""
    decode = decode_stub(cluster.worker_address(cluster.decode[0]))
    reservation = decode.Reserve(worker_pb2.ReserveRequest(
        request_id=request_id, prompt_token_ids=PROMPT, lease_seconds=60), timeout=30)
    assert decode.Cancel(worker_pb2.CancelRequest(request_id=request_id), timeout=30).found
    return reservation


def _prefill_request(request_id: str, reservation) -> worker_pb2.PrefillRequest:
    return worker_pb2.PrefillRequest(request_id=request_id, prompt_token_ids=PROMPT,
                                     sampling=inference_pb2.SamplingParams(temperature=0.0),
                                     reservation=reservation)


def test_the_prefill_worker_reports_a_gone_reservation_as_a_failed_precondition(cluster):
    reservation = _cancelled_reservation(cluster, "gone-reservation")
    prefill = prefill_stub(cluster.worker_address(cluster.prefill[0]))
    with pytest.raises(grpc.RpcError) as refused:
        prefill.Prefill(_prefill_request("gone-reservation", reservation), timeout=60)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value
    assert reservation.worker_id and reservation.worker_id in refused.value.details()


def test_the_router_keeps_the_prefill_worker_healthy_when_the_reservation_is_gone(cluster):
    reservation = _cancelled_reservation(cluster, "gone-for-router")

    async def prefill_through_the_router_calls():
        pool = WorkerPool(worker_token=worker_token())
        pool.set_endpoints([(cluster.worker_address(cluster.prefill[0]), "prefill")])
        await pool.poll_once()
        [handle] = pool.healthy("prefill")
        try:
            with pytest.raises(ReservationGone) as gone:
                await WorkerCalls(pool, rpc_timeout_s=60).unary(
                    handle, handle.stub.Prefill, _prefill_request("gone-for-router", reservation))
            return gone.value, handle.is_healthy
        finally:
            await pool.stop()

    gone, is_healthy = asyncio.run(prefill_through_the_router_calls())
    assert is_healthy, "a refused commit marked the prefill worker failed"
    assert reservation.worker_id in str(gone)
