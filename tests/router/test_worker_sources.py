"""The router's pool follows discovery: static lists, and Kubernetes EndpointSlices (kmock)."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from router.worker_pool import WorkerPool
from router.worker_sources import add_discovery_arguments, start_discovery
from tests.router_api.test_discovery import (NAMESPACE, endpoint_slice, k8s_api,  # noqa: F401 (fixture)
                                             write_kubeconfig)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_discovery_arguments(parser)
    return parser.parse_args(list(argv))


async def test_static_lists_fill_the_pool():
    pool = WorkerPool(worker_token=None)
    task = await start_discovery(_args("--prefill-workers", "10.0.0.1:1,10.0.0.2:2",
                                       "--decode-workers", "10.0.0.3:3"), pool)
    assert task is None
    assert pool.endpoints() == [("10.0.0.1:1", "prefill"), ("10.0.0.2:2", "prefill"),
                                ("10.0.0.3:3", "decode")]
    await pool.stop()


async def test_static_discovery_without_decode_workers_is_refused():
    with pytest.raises(SystemExit, match="decode"):
        await start_discovery(_args("--prefill-workers", "10.0.0.1:1"), WorkerPool(worker_token=None))


async def test_kubernetes_endpoint_slices_follow_into_the_pool(k8s_api, kmock, tmp_path, monkeypatch):
    from kubernetes_asyncio import client as k8s_client

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    api = k8s_client.DiscoveryV1Api(k8s_api)
    await api.create_namespaced_endpoint_slice(NAMESPACE, endpoint_slice(
        "demo-decode", "decode", "small", {"decode-0": ("10.0.0.1", True)}))
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"))
    pool = WorkerPool(worker_token=None)
    task = await start_discovery(_args("--discovery", "kubernetes", "--namespace", NAMESPACE,
                                       "--deployment", "demo", "--kubeconfig", kubeconfig), pool)
    try:
        assert pool.endpoints() == [("10.0.0.1:50051", "decode")]
        await api.create_namespaced_endpoint_slice(NAMESPACE, endpoint_slice(
            "demo-prefill", "prefill", "small", {"prefill-0": ("10.0.1.1", True)}))
        await _until(lambda: ("10.0.1.1:50051", "prefill") in pool.endpoints())
        await api.delete_namespaced_endpoint_slice("demo-decode", NAMESPACE)
        await _until(lambda: pool.endpoints() == [("10.0.1.1:50051", "prefill")])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.stop()


async def _until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)
