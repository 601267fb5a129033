"""Every TandemDeployment in examples/ applies, becomes Ready and serves on the emulated cluster.

What each example names is created first, as a user would: the `models` claim (a host folder with
a generated tiny model at every path an example loads, and a `features` estimator trained with
`tandem difficulty train` where a router names one) and the API-key Secret. Each example is then
applied with only what this node forces (`on_cpu_node`: no GPUs, no GPU node labels, no RDMA
devices), served a request through the router pod's address with the `openai` client, and deleted,
its pods gone before the next. One cluster and one operator serve the whole module.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import posixpath
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
import pytest_asyncio
import yaml

from tandem_operator.context import OperatorOptions
from tests.cluster.api import PODS
from tests.cluster.cluster import Cluster
from tests.cluster.operator import running_operator
from tests.e2e_k8s.conftest import CRD, FAILED, IMAGE, NAMESPACE, REPO
from tests.e2e_k8s.test_install import condition, td_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.asyncio(loop_scope="module")]

EXAMPLES = sorted(path for path in (REPO / "examples").glob("*.yaml")
                  if yaml.safe_load(path.read_text()).get("kind") == "TandemDeployment")
API_KEY = "sk-e2e-examples"
TENANTS = {"tenants": [{"name": "e2e", "api_keys": [API_KEY]}]}
# The tiny estimator's training data (tests/integration/helpers.py) makes arithmetic easy and
# long proofs hard.
EASY = "What is 3 plus 3?"
HARD = ("Prove theorem 7: the integral of x^7 dx, showing each step of the calculus and every "
        "lemma used along the way.")


def on_cpu_node(manifest: dict) -> tuple[dict, list[str]]:
    """The example as this node can run it, and what was changed: every pool on CPU (no GPUs, so
    no `gpus` and no GPU-model node selectors), and UCX over TCP instead of RDMA devices."""
    manifest = copy.deepcopy(manifest)
    spec, changes = manifest["spec"], []
    pools = [(f"spec.{role}", spec.setdefault(role, {})) for role in ("prefill", "decode")]
    pools += [(f"spec.tiers[{tier['name']}].{role}", tier[role])
              for tier in spec.get("tiers") or [] for role in ("prefill", "decode") if role in tier]
    for where, pool in pools:
        pool["device"] = "cpu"
        changes.append(f"{where}.device: cpu")
        if pool.pop("gpus", None) is not None:
            changes.append(f"{where}.gpus removed")
        if pool.pop("nodeSelector", None) is not None:
            changes.append(f"{where}.nodeSelector removed")
        ucx = pool.get("ucx") or {}
        if ucx.get("rdma"):
            for key in ("rdmaResource", "rdmaDevices", "netDevices"):
                ucx.pop(key, None)
            ucx.update(rdma=False, transports="tcp")
            changes.append(f"{where}.ucx: rdma off, transports tcp")
    return manifest, changes


def _model_folders(example: dict) -> list[tuple[str, str]]:
    """(claim, path) of every model and estimator folder the example loads from a claim."""
    spec = example["spec"]
    folders = [tier["model"] for tier in spec.get("tiers") or []] + (
        [spec["model"]] if "model" in spec else [])
    estimator = (spec.get("router") or {}).get("estimator")
    return [(folder["pvc"]["claimName"], folder["pvc"]["path"])
            for folder in folders + ([estimator] if estimator else []) if "pvc" in folder]


def _served_names(example: dict) -> list[str]:
    """The model names clients pin: the tiers' names, or the one model's name (else folder)."""
    spec = example["spec"]
    if "tiers" in spec:
        return [tier["name"] for tier in spec["tiers"]]
    return [spec["model"].get("name") or posixpath.basename(spec["model"]["pvc"]["path"])]


def _make_claims(tmp_path: Path) -> dict[str, Path]:
    """One host folder per claim the examples name, holding what they load from it."""
    from tandem.engine.tiny_model import make_tiny_model
    from tests.integration.helpers import train_features_estimator

    claims: dict[str, Path] = {}
    estimator: str | None = None
    for path in EXAMPLES:
        example = yaml.safe_load(path.read_text())
        estimator_path = ((example["spec"].get("router") or {}).get("estimator") or {}).get(
            "pvc", {}).get("path")
        for seed, (claim, folder) in enumerate(_model_folders(example)):
            target = claims.setdefault(claim, tmp_path / f"claim-{claim}") / folder
            if target.exists():
                continue
            if folder == estimator_path:
                estimator = estimator or train_features_estimator(tmp_path)
                shutil.copytree(estimator, target)
            else:
                make_tiny_model(target, arch="llama", seed=seed)
    # As a download leaves them: readable by the pods' user (safetensors writes 0600 files).
    for root in claims.values():
        for path in root.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
    return claims


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def examples_cluster(tmp_path_factory, namespaces_reason) -> AsyncIterator[Cluster]:
    """One cluster with the chart's CRD, the operator, the claims and the API-key Secret."""
    if namespaces_reason:
        pytest.skip(f"emulated cluster unavailable: {namespaces_reason}")
    tmp_path = tmp_path_factory.mktemp("examples")
    claims = _make_claims(tmp_path)
    with pytest.MonkeyPatch.context() as env:
        async with Cluster.start(tmp_path / "cluster") as cluster:
            env.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp_path / "kubeconfig")))
            env.delenv("KUBERNETES_SERVICE_HOST", raising=False)
            for claim, folder in claims.items():
                await cluster.add_claim(NAMESPACE, claim, folder)
            secrets = {(yaml.safe_load(path.read_text())["spec"].get("router") or {}).get(
                "apiKeysSecret") for path in EXAMPLES} - {None}
            for secret in secrets:
                await cluster.apply({
                    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret},
                    "data": {"api-keys.yaml": base64.b64encode(
                        yaml.safe_dump(TENANTS).encode()).decode()}}, NAMESPACE)
            await cluster.apply(yaml.safe_load(CRD.read_text()))
            async with running_operator(OperatorOptions(namespaces=[NAMESPACE], worker_image=IMAGE,
                                                        liveness_port=None)):
                yield cluster


@pytest.fixture
def cluster(request, examples_cluster: Cluster) -> Iterator[Cluster]:
    """The module's cluster; the tail of every pod's log is printed when the test fails."""
    yield examples_cluster
    if request.node.stash.get(FAILED, True):
        print(f"\npod logs (tails):\n{examples_cluster.log_tails()}")


async def _generated_tokens(cluster: Cluster, service: str) -> float:
    """tandem_generated_tokens_total summed over the ready pods of a worker Service."""
    total = 0.0
    async with aiohttp.ClientSession() as session:
        for address in cluster.ready_addresses(NAMESPACE, service, "metrics"):
            async with session.get(f"http://{address}/metrics") as response:
                text = await response.text()
            total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("tandem_generated_tokens_total"))
    return total


async def _wait_until_pods_gone(cluster: Cluster, name: str, timeout_s: float = 120) -> None:
    """Waits until no pod of the deployment is left (crash-looping ones included, unlike
    `Cluster.wait_for`), so that the next example starts on an empty node."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(pod["metadata"]["labels"].get("tandem.dev/deployment") == name
              for pod in cluster.api.items(PODS, NAMESPACE)):
        assert loop.time() < deadline, f"the pods of {name} are still there after {timeout_s:g}s"
        await asyncio.sleep(0.25)


async def _wait_until_listed(client: openai.AsyncOpenAI, served: list[str]) -> None:
    """Waits until the router lists every served model (discovery trails the pods' readiness)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while sorted(model.id for model in (await client.models.list()).data) != sorted(served):
        assert loop.time() < deadline, f"the router never listed {served}"
        await asyncio.sleep(0.5)


async def _chat(client: openai.AsyncOpenAI, model: str, prompt: str) -> tuple[dict, object]:
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=4)
    return raw.headers, raw.parse()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.stem)
async def test_example_becomes_ready_and_serves(cluster: Cluster, path: Path):
    example, changes = on_cpu_node(yaml.safe_load(path.read_text()))
    print(f"{path.name}: {'; '.join(changes)}")
    name, spec = example["metadata"]["name"], example["spec"]
    await cluster.apply(example, NAMESPACE)
    try:
        await cluster.wait_for(
            lambda: condition(td_status(cluster, name), "Ready").get("status") == "True",
            f"TandemDeployment {name} Ready", timeout_s=240)
        http = await cluster.wait_for(
            lambda: cluster.ready_addresses(NAMESPACE, f"{name}-router", "http"),
            "the router's HTTP endpoint")
        client = openai.AsyncOpenAI(base_url=f"http://{http[0]}/v1", api_key=API_KEY, timeout=120)
        served = _served_names(example)
        await _wait_until_listed(client, served)
        if "tiers" in spec:
            await _check_tiers(cluster, client, name, served)
        else:
            headers, answer = await _chat(client, served[0], "Say hello.")
            assert answer.model == headers["x-tandem-model"] == served[0]
            assert answer.usage.completion_tokens >= 1
            # The deployment's name lets the router choose: here its one model.
            headers, answer = await _chat(client, name, "Say hello.")
            assert answer.model == served[0]
        await client.close()
        if (spec.get("autoscaling") or {}).get("metrics", {}).get("source") == "prometheus":
            await _check_metrics_reported_unavailable(cluster, name)
    finally:
        await cluster.delete(example, NAMESPACE)
        await _wait_until_pods_gone(cluster, name)


async def _check_tiers(cluster: Cluster, client: openai.AsyncOpenAI, name: str,
                       tiers: list[str]) -> None:
    # auto and the deployment's name: the policy chooses by difficulty, easy to the small tier.
    for model in ("auto", name):
        for prompt, tier in ((EASY, "small"), (HARD, "large")):
            headers, answer = await _chat(client, model, prompt)
            assert answer.model == headers["x-tandem-model"] == tier, headers
            assert headers["x-tandem-estimator"] == "features"
    # Pinned by name: that tier's decode workers make the tokens, the other tier's none.
    for tier in tiers:
        before = {t: await _generated_tokens(cluster, f"{name}-{t}-decode") for t in tiers}
        headers, answer = await _chat(client, tier, EASY)
        assert answer.model == headers["x-tandem-model"] == tier
        after = {t: await _generated_tokens(cluster, f"{name}-{t}-decode") for t in tiers}
        assert after[tier] - before[tier] >= answer.usage.completion_tokens >= 1
        assert all(after[t] == before[t] for t in tiers if t != tier), (before, after)


async def _check_metrics_reported_unavailable(cluster: Cluster, name: str) -> None:
    # No Prometheus runs here: the autoscaler holds each pool and its status says why.
    def reasons() -> list[str]:
        pools = (td_status(cluster, name).get("autoscaling") or {}).get("pools") or []
        return [pool.get("reason") or "" for pool in pools]

    found = await cluster.wait_for(lambda: [r for r in reasons() if "prometheus" in r.lower()],
                                   "the status to say Prometheus is unavailable", timeout_s=120)
    print(f"{name}: autoscaling status: {found}")
    assert all("holding" in reason for reason in found), found
    assert condition(td_status(cluster, name), "Ready").get("status") == "True"
