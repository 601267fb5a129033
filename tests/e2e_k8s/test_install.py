"""Install as a user would: the chart's CRD, then examples/tandemdeployment-minimal.yaml.

The model claim holds a generated tiny model where the example expects its model; the node has no
GPU, so the pools run on CPU (the one change made to the example, see `on_cpu`). Everything else
goes through the Kubernetes API and the router's public APIs, at the router pod's address.
"""

from __future__ import annotations

import base64
import copy
import json

import grpc
import openai
import pytest
import yaml

from tandem.api.v1 import inference_pb2, inference_pb2_grpc
from tests.cluster.api import DEPLOYMENTS, PODS
from tests.cluster.cluster import Cluster
from tests.e2e_k8s.conftest import NAMESPACE, REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EXAMPLE = REPO / "examples" / "tandemdeployment-minimal.yaml"
API_KEY = "sk-e2e-minimal"
TENANTS = {"tenants": [{"name": "e2e", "api_keys": [API_KEY]}]}


def on_cpu(manifest: dict) -> dict:
    """The example with both pools on CPU: this node has no GPU."""
    manifest = copy.deepcopy(manifest)
    for pool in ("prefill", "decode"):
        manifest["spec"].setdefault(pool, {})["device"] = "cpu"
    return manifest


async def install_minimal(cluster: Cluster, tmp_path, example: dict | None = None) -> dict:
    """The model claim, the API-key Secret the example names, then the example (by default the
    minimal one on CPU; the `operator` fixture has installed the chart's CRD)."""
    from tandem.engine.tiny_model import make_tiny_model

    example = example or on_cpu(yaml.safe_load(EXAMPLE.read_text()))
    model = example["spec"]["model"]
    claim = tmp_path / "models-volume"
    make_tiny_model(claim / model["pvc"]["path"], arch="llama", seed=0)
    # As a model download leaves it: readable by the pods' user (safetensors writes 0600 files).
    for path in claim.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    await cluster.add_claim(NAMESPACE, model["pvc"]["claimName"], claim)
    secret = (example["spec"].get("router") or {}).get("apiKeysSecret")
    if secret:
        await cluster.apply({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret},
            "data": {"api-keys.yaml": base64.b64encode(yaml.safe_dump(TENANTS).encode()).decode()}},
            NAMESPACE)
    await cluster.apply(example, NAMESPACE)
    return example


def td_status(cluster: Cluster, name: str) -> dict:
    """The TandemDeployment's status."""
    resource = cluster.resource_of({"apiVersion": "tandem.dev/v1alpha1", "kind": "TandemDeployment"})
    return (cluster.api.get(resource, NAMESPACE, name) or {}).get("status") or {}


def condition(status: dict, kind: str) -> dict:
    """One condition of a status."""
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


async def test_minimal_example_serves_through_the_router_pod(cluster: Cluster, operator, tmp_path):
    example = await install_minimal(cluster, tmp_path)
    name = example["metadata"]["name"]
    served = example["spec"]["model"]["name"]

    await cluster.wait_for(lambda: condition(td_status(cluster, name), "Ready").get("status") == "True",
                           f"TandemDeployment {name} Ready", timeout_s=240)
    status = td_status(cluster, name)
    assert (status["routerReplicas"], status["prefillReplicas"], status["decodeReplicas"]) == (
        "1/1", "1/1", "1/1")
    assert {(w["name"], w["readyReplicas"], w["desiredReplicas"]) for w in status["workloads"]} == {
        (f"{name}-router", 1, 1), (f"{name}-default-prefill", 1, 1), (f"{name}-default-decode", 1, 1)}
    # What the status says is what runs: one ready pod per Deployment.
    for deployment in cluster.api.items(DEPLOYMENTS, NAMESPACE):
        assert deployment["status"]["readyReplicas"] == 1, deployment["metadata"]["name"]
    assert len(list(cluster.api.items(PODS, NAMESPACE))) == 3

    http = await cluster.wait_for(lambda: cluster.ready_addresses(NAMESPACE, f"{name}-router", "http"),
                                  "the router's HTTP endpoint")
    client = openai.AsyncOpenAI(base_url=f"http://{http[0]}/v1", api_key=API_KEY, timeout=120)
    answer = await client.chat.completions.create(
        model=served, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert answer.model == served
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens >= 1 and answer.usage.prompt_tokens >= 1

    stream = await client.chat.completions.create(
        model=served, messages=[{"role": "user", "content": "Count to three."}], max_tokens=8,
        stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert any(c.choices and c.choices[0].finish_reason in ("stop", "length") for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    await client.close()
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(base_url=f"http://{http[0]}/v1", api_key="sk-wrong").completions.create(
            model=served, prompt="hi", max_tokens=2)

    # gRPC: a short prompt (prefilled on the decode worker) and a long one, whose KV the prefill
    # pod ships to the decode pod over UCX, between the two pods' network namespaces.
    vocab_size = json.loads((tmp_path / "models-volume" / example["spec"]["model"]["pvc"]["path"]
                             / "config.json").read_text())["vocab_size"]
    long_prompt = inference_pb2.TokenInput(token_ids=[(7 * i) % (vocab_size - 10) + 5 for i in range(600)])
    grpc_address = cluster.ready_addresses(NAMESPACE, f"{name}-router", "grpc")[0]
    async with grpc.aio.insecure_channel(grpc_address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        for prompt, is_disaggregated in (({"prompt": "Once upon a time"}, False),
                                         ({"tokens": long_prompt}, True)):
            request = inference_pb2.GenerateRequest(
                model=served, sampling=inference_pb2.SamplingParams(temperature=0.0),
                budget=inference_pb2.Budget(max_tokens=6), **prompt)
            responses = [r async for r in stub.Generate(
                request, metadata=[("authorization", f"Bearer {API_KEY}")], timeout=120)]
            assert 1 <= len([t for r in responses for t in r.token_ids]) <= 6
            assert any(r.HasField("usage") for r in responses)
            (routing,) = [r.routing for r in responses if r.HasField("routing")]
            assert routing.disaggregated is is_disaggregated


async def test_as_written_on_a_node_without_gpus_nothing_fits_and_status_says_so(cluster: Cluster,
                                                                                  operator):
    # The example as written asks for one GPU per worker; this node has none. Its API-key
    # Secret is not created at first: the status says what the deployment waits for.
    example = yaml.safe_load(EXAMPLE.read_text())
    name = example["metadata"]["name"]
    secret = example["spec"]["router"]["apiKeysSecret"]
    await cluster.add_claim(NAMESPACE, example["spec"]["model"]["pvc"]["claimName"], REPO / "examples")
    await cluster.apply(example, NAMESPACE)
    waiting = await cluster.wait_for(
        lambda: (c := condition(td_status(cluster, name), "Progressing")).get("reason")
        == "WaitingForSecret" and c, "the status naming the missing Secret")
    assert secret in waiting["message"] and waiting["status"] == "True"
    assert condition(td_status(cluster, name), "Ready")["status"] == "False"
    assert not list(cluster.api.items(PODS, NAMESPACE))  # no router pod stuck on a mount

    await cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret},
                         "data": {"api-keys.yaml": base64.b64encode(
                             yaml.safe_dump(TENANTS).encode()).decode()}}, NAMESPACE)

    def reasons() -> dict[str, str]:
        found = {}
        for pod in cluster.api.items(PODS, NAMESPACE):
            role = pod["metadata"]["labels"]["tandem.dev/role"]
            scheduled = next((c for c in (pod.get("status") or {}).get("conditions") or []
                              if c["type"] == "PodScheduled"), {})
            found[role] = scheduled.get("reason")
        return found

    # The Secret appeared: the deployment proceeds, and the worker pods cannot be placed.
    await cluster.wait_for(lambda: reasons().get("prefill") == reasons().get("decode")
                           == "Unschedulable", "worker pods unschedulable")
    events = {(e["reason"], e["involvedObject"]["name"].split("-")[1]) for e in cluster.kubelet.events.posted}
    assert ("FailedScheduling", "default") in events
    assert not [e for e in cluster.kubelet.events.posted if e["reason"] == "FailedMount"]
    assert any("Insufficient nvidia.com/gpu" in e["message"] for e in cluster.kubelet.events.posted)
    await cluster.wait_for(lambda: td_status(cluster, name).get("decodeReplicas") == "0/1",
                           "the status's replica counts")
    status = td_status(cluster, name)
    assert status["prefillReplicas"] == "0/1"
    assert condition(status, "Ready")["status"] == "False"
    assert condition(status, "Progressing")["status"] == "True"
