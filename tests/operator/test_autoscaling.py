"""Metric series -> PrometheusSource -> shared policy -> DeploymentScaler -> Deployments and status.

Prometheus is a kmock HTTP mock answering instant queries from per-pool series the test sets
(and the router's latency series, role "router"); the Kubernetes side is the emulator. Time is
simulated: each tick passes `now` explicitly.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kmock
import pytest

from tandem.policy.autoscaling import Phase
from tandem_operator.autoscale.connector import DeploymentScaler
from tandem_operator.autoscale.controller import DeploymentAutoscaler
from tandem_operator.autoscale.mode import ScalingMode, pool_scaling_mode
from tandem_operator.autoscale.prometheus import PrometheusSource
from tandem_operator.manifests.objects import Owner
from tandem_operator.observe import observe_and_scale
from tandem_operator.parsing import parse_spec
from tandem_operator.reconcile import reconcile
from tests.operator.cluster import (DEPLOYMENTS, IMAGE, NAMESPACE, TD, create_td, live, mark_ready,
                                    patch_td, writes)

TICK_S = 15.0


class Series:
    """The value of each metric for each pool (by role), as Prometheus would answer."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], float] = {}
        self.queries: list[str] = []
        self.is_down = False

    def set(self, role: str, **metrics: float) -> None:
        for name, value in metrics.items():
            self.values[role, name] = value

    def answer(self, request: kmock.Request) -> Any:
        if self.is_down:
            return kmock.Response(status=503, payload={
                "status": "error", "errorType": "unavailable", "error": "prometheus is restarting"})
        query = request.params["query"]
        self.queries.append(query)
        role = re.search(r'tandem_role="(\w+)"', query).group(1)
        name = re.search(r"(tandem_\w+?)(_bucket|_total)?\{", query).group(1)
        value = self.values.get((role, name))
        result = [] if value is None else [{"metric": {}, "value": [0, str(value)]}]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
async def prometheus() -> AsyncIterator[tuple[str, Series]]:
    series = Series()
    async with kmock.RawHandler() as handler, kmock.Server(handler):
        handler["get /api/v1/query"] << series.answer
        yield str(handler.url).rstrip("/"), series


def _spec(url: str, **overrides: Any) -> dict[str, Any]:
    autoscaling = {"enabled": True, "intervalSeconds": TICK_S, "ttftSloSeconds": 1.0,
                   "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 60,
                   "maxScaleUpStep": 4, "maxScaleDownStep": 1,
                   "metrics": {"source": "prometheus", "prometheusUrl": url}}
    autoscaling.update(overrides.pop("autoscaling", {}))
    spec = {"model": {"image": {"path": "/opt/models/llama"}},
            "prefill": {"minReplicas": 1, "maxReplicas": 8,
                        "capacity": {"prefillTokensPerSecond": 1000}},
            "decode": {"minReplicas": 1, "maxReplicas": 8, "capacity": {"maxSequences": 8}},
            "router": {"allowAnonymous": True}, "autoscaling": autoscaling}
    for pool, fields in overrides.items():
        spec[pool] = {**spec[pool], **fields}
    return spec


class Loop:
    """The operator's background loop for one TandemDeployment, ticked by hand."""

    def __init__(self, k8s, kube, http: aiohttp.ClientSession, owner: Owner,
                 raw_spec: dict[str, Any], scaling_mode=pool_scaling_mode) -> None:
        self.k8s, self.kube, self.owner = k8s, kube, owner
        self.spec = parse_spec(raw_spec, owner.name, IMAGE)
        self.autoscaler = DeploymentAutoscaler(
            lambda autoscaling: PrometheusSource(http, autoscaling.prometheus_url),
            DeploymentScaler(kube), scaling_mode=scaling_mode)
        self.now = 0.0

    async def tick(self, is_ready: bool = True):
        """One tick `TICK_S` after the previous; the pods of the last change are ready first."""
        if is_ready:
            mark_ready(self.k8s)
        self.now += TICK_S
        raw = self.k8s.objects[TD, NAMESPACE, self.owner.name].raw
        return await observe_and_scale(self.kube, self.owner, self.spec, self.autoscaler,
                                       self.now, dict(raw.get("status") or {}),
                                       raw.get("metadata", {}).get("generation"))

    def replicas(self) -> dict[str, int]:
        """Replicas by pool role."""
        return {name.rsplit("-", 1)[-1]: deployment["spec"]["replicas"]
                for name, deployment in live(self.k8s, DEPLOYMENTS).items()
                if name != "llama-router"}

    def status(self) -> dict[str, Any]:
        return dict(self.k8s.objects[TD, NAMESPACE, self.owner.name].raw["status"])

    def condition(self, kind: str) -> dict[str, Any]:
        (condition,) = [c for c in self.status()["conditions"] if c["type"] == kind]
        return condition


@pytest.fixture
async def start(k8s, kube, prometheus):
    """Creates and reconciles a TandemDeployment; returns its hand-ticked loop."""
    url, _ = prometheus
    async with aiohttp.ClientSession() as http:

        async def start(scaling_mode=pool_scaling_mode, **overrides: Any) -> Loop:
            raw = _spec(url, **overrides)
            body = await create_td(k8s, "llama", raw)
            owner = Owner("llama", NAMESPACE, body["metadata"]["uid"])
            await reconcile(kube, owner, parse_spec(raw, "llama", IMAGE))
            return Loop(k8s, kube, http, owner, raw, scaling_mode)

        yield start


async def test_a_burst_of_long_prompts_scales_prefill_and_not_decode(start, prometheus):
    _, series = prometheus
    loop = await start()
    series.set("prefill", tandem_queue_prompt_tokens=0, tandem_prefill_tokens=300)
    series.set("decode", tandem_running_requests=4, tandem_kv_blocks_used=100,
               tandem_kv_blocks_total=1000)
    await loop.tick()
    assert loop.replicas() == {"prefill": 1, "decode": 1}

    # 20 prompts of 2,000 tokens arrive: 40,000 queued tokens must drain within the 1 s TTFT SLO.
    series.set("prefill", tandem_queue_prompt_tokens=40_000, tandem_prefill_tokens=1000)
    observation = await loop.tick()
    assert loop.replicas() == {"prefill": 5, "decode": 1}  # +4 at most per change
    assert [d.pool.phase.value for d in observation.changes] == ["prefill"]
    await loop.tick()
    assert loop.replicas() == {"prefill": 8, "decode": 1}  # up to maxReplicas
    decision = loop.status()["lastScalingDecision"]
    assert decision["pool"] == "llama-default-prefill" and decision["toReplicas"] == 8
    assert "prefill demand" in decision["reason"]
    assert loop.status()["prefillReplicas"] == "5/8"  # the 3 new pods are not ready yet


async def test_many_long_generations_scale_decode_and_not_prefill(start, prometheus):
    _, series = prometheus
    loop = await start()
    series.set("prefill", tandem_queue_prompt_tokens=500, tandem_prefill_tokens=200)
    series.set("decode", tandem_running_requests=8, tandem_queue_requests=0,
               tandem_kv_blocks_used=500, tandem_kv_blocks_total=1000)
    await loop.tick()
    assert loop.replicas() == {"prefill": 1, "decode": 1}

    # 40 long generations: their KV fills the pool and they exceed one replica's batch.
    series.set("decode", tandem_running_requests=24, tandem_queue_requests=16,
               tandem_kv_blocks_used=950, tandem_kv_blocks_total=1000)
    observation = await loop.tick()
    assert loop.replicas() == {"prefill": 1, "decode": 5}
    assert [d.pool.phase.value for d in observation.changes] == ["decode"]
    assert "sequences" in loop.status()["lastScalingDecision"]["reason"]


async def test_noisy_load_does_not_flap_and_the_windows_come_from_the_spec(start, prometheus):
    _, series = prometheus

    async def count_changes(loop: Loop) -> int:
        changes = 0
        for tick in range(12):  # decode load swings between ~1 and ~3 replicas' worth
            series.set("decode", tandem_running_requests=22 if tick % 2 else 6,
                       tandem_kv_blocks_used=200, tandem_kv_blocks_total=1000)
            observation = await loop.tick()
            changes += len(observation.changes)
        return changes

    series.set("prefill", tandem_queue_prompt_tokens=0, tandem_prefill_tokens=100)
    stable = await start(decode={"replicas": 2}, autoscaling={"scaleUpStabilizationSeconds": 45,
                                                              "scaleDownStabilizationSeconds": 45})
    assert await count_changes(stable) == 0
    assert stable.replicas()["decode"] == 2


async def test_without_stabilisation_the_same_noise_flaps(k8s, start, prometheus):
    _, series = prometheus
    series.set("prefill", tandem_queue_prompt_tokens=0, tandem_prefill_tokens=100)
    loop = await start(decode={"replicas": 2}, autoscaling={"scaleUpStabilizationSeconds": 0,
                                                            "scaleDownStabilizationSeconds": 0})
    sizes = []
    for tick in range(6):
        series.set("decode", tandem_running_requests=22 if tick % 2 else 6,
                   tandem_kv_blocks_used=200, tandem_kv_blocks_total=1000)
        await loop.tick()
        sizes.append(loop.replicas()["decode"])
    assert len(set(sizes)) > 1 and sizes.count(3) >= 2


async def test_a_fixed_pool_is_never_read_and_the_reconciler_keeps_its_replicas(k8s, kube, start,
                                                                             prometheus):
    _, series = prometheus
    loop = await start(decode={"scaling": "fixed", "replicas": 2})
    series.set("prefill", tandem_queue_prompt_tokens=0, tandem_prefill_tokens=100)
    series.set("decode", tandem_running_requests=64, tandem_kv_blocks_used=990,
               tandem_kv_blocks_total=1000)
    for _ in range(3):
        await kube.patch("Deployment", NAMESPACE, "llama-default-decode", {"spec": {"replicas": 5}})
        observation = await loop.tick()
        assert loop.replicas()["decode"] == 2  # the spec's count, restored on the tick
    (decode,) = [d for d in observation.decisions if d.pool.phase is Phase.DECODE]
    assert not decode.is_change and decode.mode is ScalingMode.FIXED
    assert "scaling: fixed" in decode.reason
    pools = {p["phase"]: p for p in loop.status()["autoscaling"]["pools"]}
    assert (pools["decode"]["mode"], pools["prefill"]["mode"]) == ("fixed", "operator")
    assert {w["name"]: w.get("scaling") for w in loop.status()["workloads"]} == {
        "llama-router": None, "llama-default-prefill": "operator", "llama-default-decode": "fixed"}
    assert not [q for q in series.queries if 'tandem_role="decode"' in q]  # never read


async def test_waits_for_the_pods_of_the_last_change(start, prometheus):
    _, series = prometheus
    loop = await start()
    series.set("prefill", tandem_queue_prompt_tokens=40_000, tandem_prefill_tokens=1000)
    await loop.tick()
    assert loop.replicas()["prefill"] == 5
    observation = await loop.tick(is_ready=False)  # the 4 new pods are still starting
    assert loop.replicas()["prefill"] == 5
    assert "waiting for the previous action" in observation.decisions[0].reason


async def test_unreadable_metrics_hold_the_pool_and_say_why(start, prometheus):
    _, series = prometheus
    loop = await start()
    series.is_down = True
    observation = await loop.tick()
    assert loop.replicas() == {"prefill": 1, "decode": 1}
    reasons = [pool["reason"] for pool in loop.status()["autoscaling"]["pools"]]
    assert len(reasons) == 2
    assert all(reason.startswith("holding") and "503" in reason for reason in reasons)
    assert not observation.changes


async def test_a_concurrent_change_to_the_deployment_is_retried(k8s, start, prometheus):
    _, series = prometheus
    loop = await start()
    series.set("prefill", tandem_queue_prompt_tokens=40_000, tandem_prefill_tokens=1000)
    k8s.concurrent_writes[DEPLOYMENTS, "llama-default-prefill"] = {
        "metadata": {"labels": {"example.com/touched": "yes"}}}
    await loop.tick()
    prefill = live(k8s, DEPLOYMENTS)["llama-default-prefill"]
    assert prefill["spec"]["replicas"] == 5
    assert prefill["metadata"]["labels"]["example.com/touched"] == "yes"


async def test_first_tokens_slower_than_the_slo_at_the_router_scale_prefill(start, prometheus):
    _, series = prometheus
    loop = await start()
    # Demand fits one replica, but the router sees first tokens slower than the 1 s TTFT SLO.
    series.set("prefill", tandem_queue_prompt_tokens=0, tandem_prefill_tokens=300)
    series.set("decode", tandem_running_requests=2, tandem_kv_blocks_used=100,
               tandem_kv_blocks_total=1000)
    series.set("router", tandem_ttft_seconds=3.0, tandem_itl_seconds=0.01)
    observation = await loop.tick()
    assert loop.replicas() == {"prefill": 2, "decode": 1}
    assert [d.pool.phase.value for d in observation.changes] == ["prefill"]
    assert "observed TTFT P90 3s > SLO 1s" in observation.changes[0].reason
    # Each pool asks the router's series of the models its own workers report.
    latency = {q.split("_bucket")[0].rsplit("tandem_", 1)[1]: q for q in series.queries
               if 'tandem_role="router"' in q}
    assert set(latency) == {"ttft_seconds", "itl_seconds"}
    assert 'group by (model) (tandem_kv_blocks_total{' in latency["ttft_seconds"]
    assert 'tandem_role="prefill",tandem_model="default"' in latency["ttft_seconds"]
    assert 'tandem_role="decode",tandem_model="default"' in latency["itl_seconds"]


async def test_a_replica_that_never_becomes_ready_stops_blocking_after_the_timeout(start, prometheus):
    _, series = prometheus
    loop = await start()
    series.set("prefill", tandem_queue_prompt_tokens=40_000, tandem_prefill_tokens=1000)
    await loop.tick()
    assert loop.replicas()["prefill"] == 5
    series.set("prefill", tandem_queue_prompt_tokens=0, tandem_prefill_tokens=100)  # load gone
    timeout_s = 600.0  # the policy's default pending timeout
    for _ in range(int(timeout_s // TICK_S)):  # 4 of the 5 pods never schedule
        observation = await loop.tick(is_ready=False)
        assert "waiting for the previous action" in observation.decisions[0].reason
        assert loop.condition("ReplicasStalled")["status"] == "False"
    assert loop.replicas()["prefill"] == 5
    observation = await loop.tick(is_ready=False)
    assert loop.replicas()["prefill"] == 4  # scale-down goes on: the pool is no longer frozen
    assert "not ready for 600s" in observation.changes[0].reason
    stalled = loop.condition("ReplicasStalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ReplicasNotReady"
    assert "llama-default-prefill: 4 of 5 replicas not ready" in stalled["message"]
    await loop.tick()  # the pods become ready
    assert loop.condition("ReplicasStalled")["status"] == "False"


async def test_a_pool_driven_by_an_external_scaler_is_never_written(k8s, kube, start, prometheus):
    url, series = prometheus
    loop = await start(decode={"scaling": "external", "replicas": 1})
    series.set("prefill", tandem_queue_prompt_tokens=40_000, tandem_prefill_tokens=1000)
    series.set("decode", tandem_running_requests=64, tandem_kv_blocks_used=990,
               tandem_kv_blocks_total=1000)  # the operator's policy would want 8 replicas
    # As an HPA writes through the Deployment's scale subresource.
    await kube.patch("Deployment", NAMESPACE, "llama-default-decode", {"spec": {"replicas": 3}})
    hpa_write = len(writes(k8s, DEPLOYMENTS))
    for _ in range(3):
        observation = await loop.tick()
    assert loop.replicas() == {"prefill": 8, "decode": 3}
    # A spec edit rolls the pool's pods out again, and still leaves its size alone.
    loop.spec = parse_spec(_spec(url, decode={"scaling": "external", "replicas": 1,
                                             "nodeSelector": {"pool": "decode"}}),
                           "llama", IMAGE)
    observation = await loop.tick()
    decode_deployment = live(k8s, DEPLOYMENTS)["llama-default-decode"]["spec"]
    assert decode_deployment["template"]["spec"]["nodeSelector"] == {"pool": "decode"}
    assert decode_deployment["replicas"] == 3
    later = [w for w in writes(k8s, DEPLOYMENTS)[hpa_write:] if w.name == "llama-default-decode"]
    assert later and not [w for w in later if "replicas" in (w.data.get("spec") or {})]
    (decode,) = [d for d in observation.decisions if d.pool.phase is Phase.DECODE]
    assert not decode.is_change and decode.num_replicas == 3 and decode.mode is ScalingMode.EXTERNAL
    assert "external scaler" in decode.reason
    pools = {p["phase"]: p["mode"] for p in loop.status()["autoscaling"]["pools"]}
    assert pools == {"prefill": "operator", "decode": "external"}
    assert not [q for q in series.queries if 'tandem_role="decode"' in q]  # never read


async def test_a_tick_that_applied_the_spec_reports_its_generation(start):
    """The tick reconciles the spec it read; the status then names that spec's generation, so
    Ready does not depend on the change handler having run after a restart."""
    loop = await start()
    await loop.tick()
    generation = loop.k8s.objects[TD, NAMESPACE, "llama"].raw["metadata"]["generation"]
    assert loop.status()["observedGeneration"] == generation
    await patch_td(loop.k8s, "llama", {"spec": {"decode": {"maxReplicas": 3}}})  # no handler runs
    loop.spec = parse_spec(loop.k8s.objects[TD, NAMESPACE, "llama"].raw["spec"], "llama", IMAGE)
    await loop.tick()
    assert loop.status()["observedGeneration"] == generation + 1
