"""Worker discovery: static lists, Kubernetes EndpointSlices against kmock, health bookkeeping."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client as k8s_client

from router.discovery_k8s import KubernetesDiscovery, KubernetesDiscoveryConfig, slice_endpoints

NAMESPACE = "serving"
SLICES = "discovery.k8s.io/v1/endpointslices"


def endpoint_slice(name: str, role: str, model: str, pods: dict[str, tuple[str, bool | None]],
                   deployment: str = "demo") -> dict:
    """An EndpointSlice as the API serves it: pods maps a pod name to (ip, ready)."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "labels": {"tandem.dev/deployment": deployment, "tandem.dev/role": role,
                                "tandem.dev/model": model, "kubernetes.io/service-name": name}},
        "ports": [{"name": "metrics", "port": 9100}, {"name": "grpc", "port": 50051}],
        "endpoints": [{"addresses": [ip], "conditions": {} if ready is None else {"ready": ready},
                       "targetRef": {"kind": "Pod", "name": pod, "namespace": NAMESPACE}}
                      for pod, (ip, ready) in pods.items()],
    }


def ids(endpoints) -> set[tuple[str, str, str, str]]:
    return {(e.worker_id, e.address, e.role.value, e.model) for e in endpoints}


async def next_change(watch, timeout: float = 5.0):
    return await asyncio.wait_for(anext(watch), timeout)


@pytest.fixture
async def k8s_api(kmock):
    kmock.resources[SLICES] = {"kind": "EndpointSlice", "namespaced": True}
    configuration = k8s_client.Configuration(host=str(kmock.url).rstrip("/"))
    async with k8s_client.ApiClient(configuration) as api_client:
        yield api_client


def write_kubeconfig(path, server: str) -> str:
    path.write_text(f"""
apiVersion: v1
kind: Config
clusters: [{{name: mock, cluster: {{server: "{server}"}}}}]
users: [{{name: tester, user: {{token: not-a-secret}}}}]
contexts: [{{name: mock, context: {{cluster: mock, user: tester}}}}]
current-context: mock
""")
    return str(path)


async def test_endpoint_slices_initial_list_add_not_ready_and_delete(k8s_api, kmock, tmp_path, monkeypatch):
    api = k8s_client.DiscoveryV1Api(k8s_api)
    await api.create_namespaced_endpoint_slice(NAMESPACE, endpoint_slice(
        "demo-decode-small", "decode", "small", {"decode-0": ("10.0.0.1", True), "decode-1": ("10.0.0.2", None)}))
    await api.create_namespaced_endpoint_slice(NAMESPACE, endpoint_slice(
        "other-decode", "decode", "small", {"other-0": ("10.9.9.9", True)}, deployment="other"))
    # The router's own Service has a slice with the deployment label too: not a worker.
    await api.create_namespaced_endpoint_slice(NAMESPACE, endpoint_slice(
        "demo-router", "router", "small", {"router-0": ("10.0.2.1", True)}))
    # A long retry delay: every change below must arrive through the watch, not a re-list.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"))
    discovery = await KubernetesDiscovery.connect(KubernetesDiscoveryConfig("demo", NAMESPACE, retry_delay_s=60),
                                                  kubeconfig=kubeconfig)
    await discovery.start()
    watch = discovery.watch()
    try:
        initial = {("decode-0", "10.0.0.1:50051", "decode", "small"),
                   ("decode-1", "10.0.0.2:50051", "decode", "small")}
        assert ids(await next_change(watch)) == initial

        await api.create_namespaced_endpoint_slice(NAMESPACE, endpoint_slice(
            "demo-prefill-small", "prefill", "small", {"prefill-0": ("10.0.1.1", True)}))
        added = initial | {("prefill-0", "10.0.1.1:50051", "prefill", "small")}
        assert ids(await next_change(watch)) == added

        not_ready = endpoint_slice("demo-decode-small", "decode", "small",
                                   {"decode-0": ("10.0.0.1", True), "decode-1": ("10.0.0.2", False)})
        await api.patch_namespaced_endpoint_slice("demo-decode-small", NAMESPACE,
                                                  {"endpoints": not_ready["endpoints"]})
        assert ids(await next_change(watch)) == added - {("decode-1", "10.0.0.2:50051", "decode", "small")}

        await api.delete_namespaced_endpoint_slice("demo-decode-small", NAMESPACE)
        assert ids(await next_change(watch)) == {("prefill-0", "10.0.1.1:50051", "prefill", "small")}
        assert ids(discovery.endpoints()) == {("prefill-0", "10.0.1.1:50051", "prefill", "small")}
        watches = [r for r in kmock["get"] if r.params.get("watch") == "true"]
        assert watches and all(r.headers.get("Authorization") == "Bearer not-a-secret" for r in watches)
        assert all(r.params.get("labelSelector")
                   == "tandem.dev/deployment=demo,tandem.dev/role in (decode,prefill)" for r in watches)
    finally:
        await watch.aclose()
        await discovery.close()


def test_slice_parsing_handles_ipv6_foreign_and_incomplete_slices():
    config = KubernetesDiscoveryConfig("demo", NAMESPACE)
    ipv6 = endpoint_slice("s", "decode", "small", {"decode-0": ("fd00::1", None)})
    ipv6["addressType"] = "IPv6"
    assert ids(slice_endpoints(ipv6, config)) == {("decode-0", "[fd00::1]:50051", "decode", "small")}
    assert slice_endpoints(endpoint_slice("s", "decode", "small", {"x": ("10.0.0.1", True)},
                                          deployment="other"), config) == frozenset()
    unlabelled = endpoint_slice("s", "decode", "small", {"x": ("10.0.0.1", True)})
    del unlabelled["metadata"]["labels"]["tandem.dev/role"]
    assert slice_endpoints(unlabelled, config) == frozenset()






async def test_start_fails_clearly_when_the_api_cannot_be_reached():
    configuration = k8s_client.Configuration(host="http://127.0.0.1:1")
    async with k8s_client.ApiClient(configuration) as api_client:
        discovery = KubernetesDiscovery(KubernetesDiscoveryConfig("demo", NAMESPACE, retry_delay_s=0.1), api_client)
        with pytest.raises(TimeoutError, match="last error: .*Connect"):
            await discovery.start(timeout_s=0.5)
