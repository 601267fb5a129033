"""The real kopf operator, in-process, against the kmock Kubernetes emulator."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import threading
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest

import tandem_operator.main  # noqa: F401  (registers the handlers)
from tandem_operator.cli import operate
from tandem_operator.handlers import reconcile as reconcile_handler
from tandem_operator.context import OperatorOptions
from tests.operator.cluster import (
    CONFIGMAPS,
    DEPLOYMENTS,
    IMAGE,
    NAMESPACE,
    PVCS,
    SERVICES,
    TD,
    collect_garbage,
    create_td,
    delete_td,
    live,
    mark_ready,
    owned_names,
    patch_td,
    wait_for,
    writes,
)
from tests.operator.specs import ESTIMATOR, policy_for

PEERINGS = kmock.resource("kopf.dev", "v1", "clusterkopfpeerings")
SECRETS = kmock.resource("", "v1", "secrets")
SPEC = {"model": {"pvc": {"claimName": "models", "path": "llama-3-8b"}, "name": "llama-3-8b"},
        "prefill": {"replicas": 2}, "decode": {"replicas": 3},
        "router": {"apiKeysSecret": "tenants", "policy": policy_for("llama-3-8b"),
                   "estimator": ESTIMATOR},
        "autoscaling": {"intervalSeconds": 1}}  # the status refresh tick


@contextlib.asynccontextmanager
async def running_operator(**options: Any) -> AsyncIterator[None]:
    """Runs `tandem operator -n serving` (with these option overrides) until the block exits.

    kopf runs in a thread with its own event loop: on exit it cancels every task its loop
    started meanwhile, which must not include the emulator's connection handlers."""
    stop, ready = threading.Event(), threading.Event()
    settings = OperatorOptions(**{"namespaces": [NAMESPACE], "worker_image": IMAGE,
                                  "liveness_port": None, **options})
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(operate(settings, stop_flag=stop, ready_flag=ready))
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, name="operator", daemon=True)
    thread.start()
    assert await asyncio.to_thread(ready.wait, 20), errors
    try:
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
        assert not thread.is_alive() and not errors, errors


def _add_api_keys(k8s) -> None:
    k8s.resources[SECRETS] = kmock.ResourceInfo(kind="Secret", namespaced=True)
    k8s.objects[SECRETS, NAMESPACE, "tenants"] = {
        "metadata": {"name": "tenants", "namespace": NAMESPACE, "uid": "secret-tenants"}}


@pytest.fixture
def cluster(k8s, kubeconfig):
    """The emulator with the model claim and the API-key Secret the specs mount."""
    k8s.objects[PVCS, NAMESPACE, "models"] = {
        "metadata": {"name": "models", "namespace": NAMESPACE, "uid": "pvc-models"}}
    _add_api_keys(k8s)
    return k8s


def _status(k8s, name: str = "llama") -> dict:
    return dict(k8s.objects[TD, NAMESPACE, name].raw.get("status") or {})


def _events(k8s, reason: str) -> list[dict]:
    return [obj.raw for (resource, _, _), obj in k8s.objects.items()
            if resource.plural == "events" and obj.raw.get("reason") == reason]


def _reconciled_since(k8s, index: int) -> bool:
    # The reconciler (not the status loop) lists ConfigMaps, then writes the status.
    requests = list(k8s)[index:]
    listed = [i for i, r in enumerate(requests) if r.resource == CONFIGMAPS and r.method == "GET"]
    return bool(listed) and any(r.resource == TD and r.subresource == "status"
                                for r in requests[listed[0]:])


def _condition(k8s, kind: str) -> dict:
    return next((c for c in _status(k8s).get("conditions", []) if c["type"] == kind), {})


async def test_create_change_delete(cluster):
    async with running_operator():
        await create_td(cluster, "llama", SPEC)
        await wait_for(lambda: len(owned_names(cluster)) == 13)
        assert owned_names(cluster) >= {
            ("Deployment", "llama-router"), ("Deployment", "llama-default-prefill"),
            ("Deployment", "llama-default-decode"), ("Service", "llama-default-decode"),
            ("ConfigMap", "llama-router-policy"), ("Role", "llama-router")}
        deployments = live(cluster, DEPLOYMENTS)
        assert deployments["llama-default-decode"]["spec"]["replicas"] == 3
        await wait_for(lambda: _condition(cluster, "Progressing").get("status") == "True")

        mark_ready(cluster)
        await wait_for(lambda: _condition(cluster, "Ready").get("status") == "True")
        assert _status(cluster)["decodeReplicas"] == "3/3"

        await patch_td(cluster, "llama", {"spec": {"decode": {"replicas": 5, "nodeSelector": {
            "gpu": "h100"}}}})
        await wait_for(lambda: live(cluster, DEPLOYMENTS)["llama-default-decode"]["spec"]["replicas"] == 5)
        decode = live(cluster, DEPLOYMENTS)["llama-default-decode"]["spec"]["template"]["spec"]
        assert decode["nodeSelector"] == {"gpu": "h100"}
        assert "nodeSelector" not in live(cluster, DEPLOYMENTS)["llama-default-prefill"]["spec"]["template"]["spec"]

        await delete_td(cluster, "llama")
        await wait_for(lambda: (TD, NAMESPACE, "llama") not in cluster.objects
                       or cluster.objects[TD, NAMESPACE, "llama"].deleted)
    assert collect_garbage(cluster) == 14  # and the worker token Secret
    assert owned_names(cluster) == set()


async def test_invalid_spec_is_reported_and_creates_nothing(cluster):
    async with running_operator():
        await create_td(cluster, "llama", {"model": {"pvc": {"claimName": "models"}},
                                           "decode": {"minReplicas": 4, "maxReplicas": 2}})
        await wait_for(lambda: _condition(cluster, "Degraded").get("status") == "True")
        degraded = _condition(cluster, "Degraded")
        assert degraded["reason"] == "InvalidSpec"
        assert "spec.decode" in degraded["message"] and "minReplicas" in degraded["message"]
        await wait_for(lambda: any(_events(cluster, "InvalidSpec")))
        assert _events(cluster, "InvalidSpec")[0]["type"] == "Warning"
    assert owned_names(cluster) == set()


async def test_waits_for_the_model_claim(k8s, kubeconfig, monkeypatch):
    monkeypatch.setattr(reconcile_handler, "VOLUME_WAIT_S", 0.5)
    async with running_operator():
        await create_td(k8s, "llama", SPEC)
        await wait_for(lambda: _condition(k8s, "Progressing").get("reason") == "WaitingForVolume")
        assert "models" in _condition(k8s, "Progressing")["message"]
        assert owned_names(k8s) == set()
        k8s.objects[PVCS, NAMESPACE, "models"] = {
            "metadata": {"name": "models", "namespace": NAMESPACE, "uid": "pvc-models"}}
        # The router's API-key Secret is the next thing missing: a wait too, until it appears.
        await wait_for(lambda: _condition(k8s, "Progressing").get("reason") == "WaitingForSecret")
        assert "Secret tenants" in _condition(k8s, "Progressing")["message"]
        assert owned_names(k8s) == set()
        _add_api_keys(k8s)
        await wait_for(lambda: len(owned_names(k8s)) == 13)  # the retry finds both


async def test_restart_resumes_without_rewriting_and_applies_missed_changes(cluster):
    async with running_operator():
        await create_td(cluster, "llama", SPEC)
        await wait_for(lambda: len(owned_names(cluster)) == 13)
        # Stop only once the reconcile has finished (its last write is the status), so that no
        # write of the first run is left for the restarted operator to make.
        await wait_for(lambda: _status(cluster).get("observedGeneration") == 1)
    num_writes = len(writes(cluster, DEPLOYMENTS))

    num_requests = len(cluster)
    async with running_operator():  # resumed: nothing changed, nothing written
        await wait_for(lambda: _reconciled_since(cluster, num_requests))
        assert len(writes(cluster, DEPLOYMENTS)) == num_writes

    await patch_td(cluster, "llama", {"spec": {"prefill": {"replicas": 4}}})  # while it is down
    async with running_operator():
        await wait_for(lambda: _status(cluster).get("observedGeneration") == 2)
    assert live(cluster, DEPLOYMENTS)["llama-default-prefill"]["spec"]["replicas"] == 4
    assert len(owned_names(cluster)) == 13


async def test_an_api_error_is_reported_and_retried(cluster, monkeypatch):
    monkeypatch.setattr(reconcile_handler, "API_RETRY_S", 0.2)
    cluster[kmock.action.LIST, CONFIGMAPS][:1] << 503 << {
        "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 503,
        "reason": "ServiceUnavailable", "message": "etcd leader changed"}
    async with running_operator():
        await create_td(cluster, "llama", SPEC)
        await wait_for(lambda: len(owned_names(cluster)) == 13)
        await wait_for(lambda: any(_events(cluster, "ApiError")))
    assert "etcd leader changed" in _events(cluster, "ApiError")[0]["message"]


async def test_a_standby_replica_takes_over_when_the_active_one_leaves(cluster):
    # The chart's ClusterKopfPeering, already holding a live replica of higher priority.
    cluster.resources[PEERINGS] = kmock.ResourceInfo(kind="ClusterKopfPeering", namespaced=False)
    active = {"priority": 100, "lifetime": 60, "lastseen": datetime.datetime.now(
        datetime.timezone.utc).isoformat()}
    cluster.objects[PEERINGS, None, "tandem-operator"] = {
        "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
        "metadata": {"name": "tandem-operator", "resourceVersion": "1"},
        "status": {"operator-0": active}}
    async with running_operator(peering_name="tandem-operator", priority=10):
        await wait_for(lambda: len(_peering_status(cluster)) == 2)  # it joined, as standby
        assert _peering_status(cluster)["operator-0"] == active
        await create_td(cluster, "llama", SPEC)
        await asyncio.sleep(1.0)
        assert owned_names(cluster) == set(), "a standby replica must not act"

        response = await cluster.patch(  # the active replica leaves (it removes its entry)
            "/apis/kopf.dev/v1/clusterkopfpeerings/tandem-operator",
            json={"status": {"operator-0": None}},
            headers={"Content-Type": "application/merge-patch+json"})
        assert response.status == 200
        await wait_for(lambda: len(owned_names(cluster)) == 13)


def _peering_status(k8s) -> dict:
    return dict(k8s.objects[PEERINGS, None, "tandem-operator"].raw.get("status") or {})


async def test_objects_deleted_by_hand_are_recreated(cluster):
    async with running_operator():
        await create_td(cluster, "llama", SPEC)
        await wait_for(lambda: len(owned_names(cluster)) == 13)
        await wait_for(lambda: _status(cluster).get("observedGeneration") == 1)
        for resource, name in ((DEPLOYMENTS, "llama-default-decode"), (SERVICES, "llama-default-decode"),
                               (CONFIGMAPS, "llama-router-policy")):
            cluster.objects[resource, NAMESPACE, name].delete()
        assert len(owned_names(cluster)) == 10
        await wait_for(lambda: len(owned_names(cluster)) == 13)  # the next tick repairs the drift
        assert live(cluster, DEPLOYMENTS)["llama-default-decode"]["spec"]["replicas"] == 3


async def test_ready_needs_every_pool_and_a_problem_stays_until_resolved(cluster):
    # Another controller's Deployment holds the decode pool's name: the router and prefill pool
    # are created and ready, the decode pool is not.
    cluster.objects[DEPLOYMENTS, NAMESPACE, "llama-default-decode"] = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "llama-default-decode", "namespace": NAMESPACE, "uid": "foreign",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": "other", "uid": "other", "controller": True}]},
        "spec": {"replicas": 1}}
    async with running_operator():
        await create_td(cluster, "llama", SPEC)
        await wait_for(lambda: _condition(cluster, "Degraded").get("reason") == "NameTaken")
        mark_ready(cluster)
        num_status_writes = len([r for r in cluster if r.resource == TD and r.subresource == "status"])
        # Several ticks of the status loop (1 s each) later, the problem is still reported.
        await wait_for(lambda: len([r for r in cluster if r.resource == TD and r.subresource == "status"])
                       >= num_status_writes + 3)
        assert _condition(cluster, "Degraded")["reason"] == "NameTaken"
        assert "llama-default-decode" in _condition(cluster, "Degraded")["message"]
        assert _condition(cluster, "Ready")["status"] == "False"

        cluster.objects[DEPLOYMENTS, NAMESPACE, "llama-default-decode"].delete()  # resolved
        await wait_for(lambda: "llama-default-decode" in live(cluster, DEPLOYMENTS)
                       and _condition(cluster, "Degraded").get("status") == "False")
        mark_ready(cluster)
        await wait_for(lambda: _condition(cluster, "Ready").get("status") == "True")
