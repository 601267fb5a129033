"""Reads the cluster's state: KV blocks in use (GetLoad) and Prometheus counters."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families

from tandem.api.v1 import worker_pb2, worker_pb2_grpc

CANARY_METRIC = "tandem_kv_canary_violations_total"


async def get_load(address: str, is_decode: bool, metadata: tuple = (),
                   timeout_s: float = 5.0) -> worker_pb2.WorkerLoad:
    """A worker's load report (in canary mode the worker sweeps its free blocks first)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub_class = worker_pb2_grpc.DecodeWorkerStub if is_decode else worker_pb2_grpc.PrefillWorkerStub
        return await stub_class(channel).GetLoad(worker_pb2.GetLoadRequest(), metadata=metadata,
                                                 timeout=timeout_s)


async def used_blocks(address: str, is_decode: bool, metadata: tuple = (), timeout_s: float = 5.0) -> int:
    """KV blocks a worker holds for requests or reservations now."""
    return (await get_load(address, is_decode, metadata, timeout_s)).num_kv_blocks_used


async def wait_for_blocks(address: str, is_decode: bool, expected: int, timeout_s: float,
                          metadata: tuple = ()) -> int:
    """Polls until the worker's used blocks equal expected or time runs out; the last count."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            count = await used_blocks(address, is_decode, metadata)
        except grpc.aio.AioRpcError:
            count = -1  # not answering (yet): keep polling
        if count == expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.2)


async def scrape(session: aiohttp.ClientSession, url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus endpoint as (name, labels, value)."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
        text = await response.text()
    return [(sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples]


def metric_total(samples: list[tuple[str, dict[str, str], float]], name: str) -> float:
    """The sum of one metric over all its label sets (0 when absent)."""
    return sum(value for sample_name, _, value in samples if sample_name == name)


def has_metric(samples: list[tuple[str, dict[str, str], float]], name: str) -> bool:
    """Whether the endpoint exposes the metric at all."""
    return any(sample_name == name for sample_name, _, _ in samples)
