"""Faults on the emulated cluster: a worker killed with SIGKILL, a pool Deployment deleted by hand,
the TandemDeployment deleted. One install (the minimal example on CPU, with two decode pods so
that a lost worker has a peer); each fault is driven through the Kubernetes API (the kill comes
from the node, as an OOM kill would) and observed through the router's public APIs, the pods'
metrics ports and the API. The outcome of every in-flight request is printed for the record.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from pathlib import Path

import aiohttp
import grpc
import pytest

from tandem.api.v1 import inference_pb2, inference_pb2_grpc
from tandem.telemetry.exposition import parse_samples, sum_samples
from tests.cluster.api import DEPLOYMENTS, PODS
from tests.cluster.cluster import Cluster
from tests.e2e_k8s.conftest import NAMESPACE
from tests.e2e_k8s.test_install import API_KEY, condition, install_minimal, td_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

METRICS_PORT_NAME = "metrics"
LONG_TOKENS = 1500  # long enough to be mid-stream when the fault comes
CLIENT_TIMEOUT_S = 120  # far longer than any request here takes; reaching it means it hung


def ready_pods(cluster: Cluster, role: str) -> list[dict]:
    """The pods of a role whose Ready condition is True, by name."""
    pods = []
    for pod in cluster.api.items(PODS, NAMESPACE):
        status = pod.get("status") or {}
        if (pod["metadata"]["labels"].get("tandem.dev/role") == role
                and not pod["metadata"].get("deletionTimestamp")
                and any(c["type"] == "Ready" and c["status"] == "True"
                        for c in status.get("conditions") or [])):
            pods.append(pod)
    return sorted(pods, key=lambda pod: pod["metadata"]["name"])


async def scrape(pod: dict, name: str) -> float:
    """A metric's sum on a pod's metrics port (as the operator and Prometheus scrape it)."""
    port = next(p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []
                if p.get("name") == METRICS_PORT_NAME)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{pod['status']['podIP']}:{port}/metrics",
                               timeout=aiohttp.ClientTimeout(total=10)) as response:
            return sum_samples(parse_samples(await response.text()), name)


async def generate(address: str, model: str, max_tokens: int, seed: int,
                   started: asyncio.Event | None = None) -> str:
    """One streamed gRPC request through the router: 'OK <finish reason> <n> tokens' or the
    gRPC error the client got."""
    request = inference_pb2.GenerateRequest(
        model=model, prompt=f"Tell a long story number {seed}.",
        sampling=inference_pb2.SamplingParams(temperature=1.0, seed=seed),
        budget=inference_pb2.Budget(max_tokens=max_tokens))
    num_tokens, finish = 0, []
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            async for response in stub.Generate(
                    request, metadata=[("authorization", f"Bearer {API_KEY}")],
                    timeout=CLIENT_TIMEOUT_S):
                num_tokens += len(response.token_ids)
                if num_tokens and started is not None:
                    started.set()
                if response.finish_reason:
                    finish.append(inference_pb2.FinishReason.Name(response.finish_reason))
    except grpc.aio.AioRpcError as exc:
        if started is not None:
            started.set()
        return f"{exc.code().name}: {exc.details()} (after {num_tokens} tokens)"
    return f"OK {','.join(finish)} {num_tokens} tokens"


def is_clear(outcome: str) -> bool:
    """Ended normally, or with an error code a client can act on and a message saying why. The
    requests set no deadline of their own: DEADLINE_EXCEEDED is the client giving up on a hang."""
    code, _, detail = outcome.partition(": ")
    return outcome.startswith("OK ") or (
        code in ("UNAVAILABLE", "ABORTED", "RESOURCE_EXHAUSTED")
        and len(detail.split(" (after")[0]) > 10)


async def start_long_requests(address: str, model: str, num: int, seed0: int) -> list[asyncio.Task]:
    """`num` long streams, returned once each has produced a token."""
    events = [asyncio.Event() for _ in range(num)]
    tasks = [asyncio.create_task(generate(address, model, LONG_TOKENS, seed0 + i, event))
             for i, event in enumerate(events)]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in events)), 120)
    return tasks


def container_pids(cluster: Cluster) -> list[int]:
    """Host pids of every running container process, with their descendants."""
    roots = [state.run.pid for worker, _ in cluster.kubelet.workers.values()
             for state in worker.containers if state.run]
    pids, stack = [], list(roots)
    while stack:
        pid = stack.pop()
        pids.append(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                stack += [int(child) for child in children.read_text().split()]
            except OSError:
                pass
    return pids


def is_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def test_worker_kill_pool_deletion_and_uninstall(cluster: Cluster, operator, tmp_path):
    example = await install_minimal(cluster, tmp_path)
    name, model = example["metadata"]["name"], example["spec"]["model"]["name"]
    await cluster.apply({**example, "spec": {"decode": {"replicas": 2}}}, NAMESPACE)
    await cluster.wait_for(lambda: td_status(cluster, name).get("decodeReplicas") == "2/2"
                           and condition(td_status(cluster, name), "Ready").get("status") == "True",
                           f"{name} Ready with two decode pods", timeout_s=300)
    router = (await cluster.wait_for(
        lambda: cluster.ready_addresses(NAMESPACE, f"{name}-router", "grpc"), "the router"))[0]
    record: dict[str, list[str]] = collections.defaultdict(list)

    await _kill_a_decode_worker(cluster, router, model, record)
    await _delete_the_decode_deployment(cluster, name, router, model, record)
    await _delete_the_tandem_deployment(cluster, example)
    print("\nfault outcomes:")
    for what, outcomes in record.items():
        print(f"  {what}: {dict(collections.Counter(o.split(' (after')[0] for o in outcomes))}")
    # Checked last, so that one fault's hung requests do not hide what the next fault does.
    unclear = {what: [o for o in outcomes if not is_clear(o)] for what, outcomes in record.items()}
    assert not any(unclear.values()), f"requests that hung or ended without a clear error: {unclear}"


async def _kill_a_decode_worker(cluster: Cluster, router: str, model: str,
                                record: dict[str, list[str]]) -> None:
    in_flight = await start_long_requests(router, model, 6, seed0=100)
    busy = [(await scrape(pod, "tandem_running_requests"), pod) for pod in ready_pods(cluster, "decode")]
    _, victim = max(busy, key=lambda item: item[0])
    victim_name = victim["metadata"]["name"]
    (pid,) = [state.run.pid for worker, _ in cluster.kubelet.workers.values()
              if worker.name == victim_name for state in worker.containers if state.run]
    os.kill(pid, signal.SIGKILL)

    # While the worker is gone, new requests are served by its peer.
    during = await asyncio.gather(*(generate(router, model, 8, seed) for seed in range(4)))
    record["new requests while a decode worker is down"] = list(during)
    assert all(o.startswith("OK ") for o in during), during
    outcomes = await asyncio.gather(*in_flight)
    record["in flight when a decode worker got SIGKILL"] = list(outcomes)
    print(f"\nin flight when {victim_name} got SIGKILL: {outcomes}")

    def restarted() -> dict | None:
        pod = cluster.api.get(PODS, NAMESPACE, victim_name)
        statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
        return pod if statuses and statuses[0].get("restartCount", 0) >= 1 and statuses[0].get(
            "ready") else None

    pod = await cluster.wait_for(restarted, f"{victim_name} restarted and ready", timeout_s=180)
    # The emulated kubelet reads the exit through `unshare`, which reports a killed child as 1
    # (a real kubelet says 137): any failure status will do here.
    assert pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] != 0
    # The router finds the restarted worker again: its fresh process generates tokens.
    # Polled for a while: the router takes the pod back once its EndpointSlice says ready and its
    # channel's reconnect back-off has run out, which on a loaded machine takes some seconds.
    deadline = time.monotonic() + 120
    attempt = 0
    while await scrape(pod, "tandem_generated_tokens_total") == 0:
        if time.monotonic() > deadline:
            pytest.fail(f"the router never sent a request to the restarted {victim_name}")
        batch = await asyncio.gather(*(generate(router, model, 16, 1000 + 8 * attempt + i)
                                       for i in range(8)))
        assert all(o.startswith("OK ") for o in batch), batch
        attempt += 1
        await asyncio.sleep(0.5)


async def _delete_the_decode_deployment(cluster: Cluster, name: str, router: str, model: str,
                                        record: dict[str, list[str]]) -> None:
    pool = f"{name}-default-decode"
    old_uid = cluster.api.get(DEPLOYMENTS, NAMESPACE, pool)["metadata"]["uid"]
    in_flight = await start_long_requests(router, model, 4, seed0=200)
    await cluster.api.delete(DEPLOYMENTS, NAMESPACE, pool)

    def recreated() -> bool:
        deployment = cluster.api.get(DEPLOYMENTS, NAMESPACE, pool)
        return bool(deployment) and deployment["metadata"]["uid"] != old_uid

    await cluster.wait_for(recreated, f"the operator recreating {pool}", timeout_s=120)
    outcomes = await asyncio.gather(*in_flight)
    record["in flight when the decode Deployment was deleted"] = list(outcomes)
    print(f"\nin flight when {pool} was deleted: {outcomes}")
    await cluster.wait_for(lambda: len(ready_pods(cluster, "decode")) == 2
                           and condition(td_status(cluster, name), "Ready").get("status") == "True",
                           "the recreated decode pool Ready", timeout_s=240)
    for pod in ready_pods(cluster, "decode"):
        assert pod["metadata"]["ownerReferences"][0]["uid"] != old_uid
    after = await asyncio.gather(*(generate(router, model, 8, 300 + i) for i in range(4)))
    record["new requests after the decode pool was recreated"] = list(after)
    assert all(o.startswith("OK ") for o in after), after


async def _delete_the_tandem_deployment(cluster: Cluster, example: dict) -> None:
    pids = container_pids(cluster)
    assert len(pids) >= 4  # the router, one prefill and two decode pods at least
    await cluster.delete(example, NAMESPACE)
    await cluster.wait_for(lambda: not list(cluster.api.items(PODS, NAMESPACE))
                           and not list(cluster.api.items(DEPLOYMENTS, NAMESPACE))
                           and not cluster.kubelet.workers,
                           "every Deployment and pod gone", timeout_s=180)
    left = [pid for pid in pids if is_alive(pid)]
    assert not left, f"pod processes left after the TandemDeployment was deleted: {left}"
