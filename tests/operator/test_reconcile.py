"""The reconciler with a real API client against the emulator: create, no-op, change, prune, conflicts."""

from __future__ import annotations

import kmock
import pytest

from tandem_operator.apply import ForeignObjectError
from tandem_operator.manifests.objects import Owner
from tandem_operator.parsing import parse_spec
from tandem_operator.reconcile import converge, reconcile
from tandem_operator.status import Problem
from tests.operator.cluster import (
    CONFIGMAPS,
    DEPLOYMENTS,
    IMAGE,
    NAMESPACE,
    OWNED,
    SERVICES,
    create_td,
    live,
    owned_names,
    writes,
)
from tests.operator.specs import ESTIMATOR, policy_for

ONE_TIER = {"model": {"image": {"path": "/opt/models/llama"}, "name": "llama"},
            "prefill": {"replicas": 2}, "decode": {"replicas": 3},
            "router": {"allowAnonymous": True, "policy": policy_for("llama"),
                       "estimator": ESTIMATOR}}
TWO_TIERS = {
    "tiers": [{"name": "small", "model": {"image": {"path": "/opt/models/small"}}},
              {"name": "large", "model": {"pvc": {"claimName": "models", "path": "large"}},
               "decode": {"replicas": 4, "nodeSelector": {"gpu": "h200"}}}],
    "prefill": {"replicas": 1, "nodeSelector": {"gpu": "h100"}},
    "decode": {"replicas": 2},
    "router": {"allowAnonymous": True, "policy": policy_for("small", "large"),
               "estimator": ESTIMATOR},
}


async def _reconcile(kube, owner: Owner, raw_spec: dict):
    return await reconcile(kube, owner, parse_spec(raw_spec, owner.name, IMAGE))


@pytest.fixture
async def owner(k8s) -> Owner:
    body = await create_td(k8s, "llama", ONE_TIER)
    return Owner("llama", NAMESPACE, body["metadata"]["uid"])


async def test_creates_the_objects_with_owner_references_and_the_label_contract(k8s, kube, owner):
    result = await _reconcile(kube, owner, ONE_TIER)
    assert len(result.created) == 14 and not result.patched and not result.deleted
    assert "Secret/llama-worker-token" in result.created  # created once, never patched
    for kind, name in owned_names(k8s):
        meta = k8s.objects[OWNED[kind], NAMESPACE, name].raw["metadata"]
        assert meta["ownerReferences"] == [owner.reference()], (kind, name)
    decode_service = live(k8s, SERVICES)["llama-default-decode"]
    assert decode_service["spec"]["clusterIP"] == "None"
    # The router selects EndpointSlices by these labels, which slices inherit from the Service.
    assert decode_service["metadata"]["labels"].items() >= {
        "tandem.dev/deployment": "llama", "tandem.dev/role": "decode",
        "tandem.dev/model": "default"}.items()
    decode = live(k8s, DEPLOYMENTS)["llama-default-decode"]
    assert decode["spec"]["replicas"] == 3
    assert decode["spec"]["template"]["metadata"]["labels"].items() >= {
        "app.kubernetes.io/name": "tandem", "app.kubernetes.io/instance": "llama",
        "app.kubernetes.io/component": "decode", "tandem.dev/role": "decode"}.items()


async def test_second_reconcile_writes_nothing(k8s, kube, owner):
    await _reconcile(kube, owner, ONE_TIER)
    before = sum(len(writes(k8s, resource)) for resource in (DEPLOYMENTS, SERVICES, CONFIGMAPS))
    result = await _reconcile(kube, owner, ONE_TIER)
    assert not result.is_change and result.summary() == "nothing to change"
    after = sum(len(writes(k8s, resource)) for resource in (DEPLOYMENTS, SERVICES, CONFIGMAPS))
    assert after == before


async def test_changing_to_two_tiers_creates_patches_and_prunes(k8s, kube, owner):
    await _reconcile(kube, owner, ONE_TIER)
    router_hash = _policy_hash(live(k8s, DEPLOYMENTS)["llama-router"])
    result = await _reconcile(kube, owner, TWO_TIERS)

    assert {"Deployment/llama-default-prefill", "Service/llama-default-decode"} <= set(result.deleted)
    assert "Deployment/llama-large-decode" in result.created
    assert {"ConfigMap/llama-router-policy", "Deployment/llama-router"} <= set(result.patched)
    deployments = live(k8s, DEPLOYMENTS)
    assert set(deployments) == {"llama-router", "llama-small-prefill", "llama-small-decode",
                                "llama-large-prefill", "llama-large-decode"}
    large_decode = deployments["llama-large-decode"]["spec"]
    assert large_decode["replicas"] == 4
    assert large_decode["template"]["spec"]["nodeSelector"] == {"gpu": "h200"}
    assert deployments["llama-large-prefill"]["spec"]["template"]["spec"]["nodeSelector"] == {
        "gpu": "h100"}
    assert "large" in live(k8s, CONFIGMAPS)["llama-router-policy"]["data"]["policy.yaml"]
    assert _policy_hash(deployments["llama-router"]) != router_hash  # the router restarts

    await _reconcile(kube, owner, ONE_TIER)  # and back: fields it no longer sets are removed
    assert "nodeSelector" not in live(k8s, DEPLOYMENTS)["llama-default-prefill"]["spec"][
        "template"]["spec"]


async def test_objects_of_another_owner_are_left_alone(k8s, kube, owner):
    stranger = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "llama-old", "namespace": NAMESPACE,
        "labels": {"app.kubernetes.io/name": "tandem", "app.kubernetes.io/instance": "llama",
                   "app.kubernetes.io/managed-by": "tandem-operator",
                   "app.kubernetes.io/part-of": "tandem", "tandem.dev/deployment": "llama"},
        "ownerReferences": [{**owner.reference(), "uid": "some-other-uid"}]}}
    await kube.create(stranger)
    result = await _reconcile(kube, owner, ONE_TIER)
    assert "ConfigMap/llama-old" not in result.deleted
    assert "llama-old" in live(k8s, CONFIGMAPS)


async def test_an_object_of_another_controller_is_not_taken_over(k8s, kube, owner):
    theirs = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "llama-router-policy", "namespace": NAMESPACE, "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "other", "uid": "u-2",
             "controller": True}]}, "data": {"policy.yaml": "theirs"}}
    await kube.create(theirs)
    with pytest.raises(ForeignObjectError, match="controlled by Deployment other"):
        await _reconcile(kube, owner, ONE_TIER)
    assert live(k8s, CONFIGMAPS)["llama-router-policy"]["data"] == {"policy.yaml": "theirs"}


async def test_a_concurrent_change_answers_409_and_the_retry_keeps_both(k8s, kube, owner):
    await _reconcile(kube, owner, ONE_TIER)
    k8s.concurrent_writes[DEPLOYMENTS, "llama-default-decode"] = {
        "metadata": {"annotations": {"example.com/owner-note": "set by someone else"}}}
    num_patches = len(writes(k8s, DEPLOYMENTS))

    result = await _reconcile(kube, owner, {**ONE_TIER, "decode": {"replicas": 5}})

    assert result.patched == ["Deployment/llama-default-decode"]
    decode = live(k8s, DEPLOYMENTS)["llama-default-decode"]
    assert decode["spec"]["replicas"] == 5
    assert decode["metadata"]["annotations"]["example.com/owner-note"] == "set by someone else"
    assert len(writes(k8s, DEPLOYMENTS)) == num_patches + 2  # refused once (409), then applied


def _policy_hash(deployment: dict) -> str:
    return deployment["spec"]["template"]["metadata"]["annotations"]["tandem.dev/policy-hash"]



def _hpa_scales(k8s, name: str, replicas: int) -> None:
    # As an HPA writes through the Deployment's scale subresource: only spec.replicas changes.
    k8s.objects[DEPLOYMENTS, NAMESPACE, name].patch({"spec": {"replicas": replicas}})


async def test_an_external_pool_starts_at_its_size_and_is_never_resized_after(k8s, kube, owner):
    spec = {**ONE_TIER, "decode": {"replicas": 3, "scaling": "external"}}
    await _reconcile(kube, owner, spec)
    assert live(k8s, DEPLOYMENTS)["llama-default-decode"]["spec"]["replicas"] == 3
    _hpa_scales(k8s, "llama-default-decode", 6)
    num_writes = len(writes(k8s, DEPLOYMENTS))

    assert not (await _reconcile(kube, owner, spec)).is_change
    edited = {**ONE_TIER, "decode": {"replicas": 2, "scaling": "external",
                                     "nodeSelector": {"gpu": "h200"}}}
    result = await _reconcile(kube, owner, edited)

    assert result.patched == ["Deployment/llama-default-decode"]  # the template, not the size
    decode = live(k8s, DEPLOYMENTS)["llama-default-decode"]["spec"]
    assert decode["template"]["spec"]["nodeSelector"] == {"gpu": "h200"}
    assert decode["replicas"] == 6
    assert not [w for w in writes(k8s, DEPLOYMENTS)[num_writes:]
                if "replicas" in (w.data.get("spec") or {})]


async def test_a_pool_handed_to_an_external_scaler_keeps_the_size_it_has(k8s, kube, owner):
    await _reconcile(kube, owner, ONE_TIER)  # fixed: the reconciler set replicas (3) before
    _hpa_scales(k8s, "llama-default-decode", 5)
    await _reconcile(kube, owner, {**ONE_TIER, "decode": {"replicas": 3, "scaling": "external"}})
    assert live(k8s, DEPLOYMENTS)["llama-default-decode"]["spec"]["replicas"] == 5  # not removed


async def test_a_fixed_pool_is_restored_to_its_spec(k8s, kube, owner):
    spec = {**ONE_TIER, "decode": {"replicas": 3, "scaling": "fixed"},
            "autoscaling": {"enabled": True}}
    await _reconcile(kube, owner, spec)
    _hpa_scales(k8s, "llama-default-decode", 6)
    result = await _reconcile(kube, owner, spec)
    assert result.patched == ["Deployment/llama-default-decode"]
    assert live(k8s, DEPLOYMENTS)["llama-default-decode"]["spec"]["replicas"] == 3


async def test_the_worker_token_is_looked_up_not_created_again_on_every_reconcile(k8s, kube, owner):
    await _reconcile(kube, owner, ONE_TIER)
    secrets = kmock.resource("", "v1", "secrets")
    num_creates = len(writes(k8s, secrets))
    for _ in range(3):
        await _reconcile(kube, owner, ONE_TIER)
    assert len(writes(k8s, secrets)) == num_creates  # no create answered 409 on every tick


async def test_a_missing_router_secret_is_a_wait_until_it_appears(k8s, kube, owner):
    spec = parse_spec({**ONE_TIER, "router": {"apiKeysSecret": "tenants", "tlsSecret": "router-tls"}},
                      owner.name, IMAGE)
    secrets = kmock.resource("", "v1", "secrets")
    k8s.resources[secrets] = kmock.ResourceInfo(kind="Secret", namespaced=True)
    await kube.create({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "tenants", "namespace": NAMESPACE}})
    problem = await converge(kube, owner, spec)
    assert problem == Problem("WaitingForSecret", "waiting for Secret router-tls (named in "
                              "spec.router)", is_degraded=False)
    assert "llama-router" not in live(k8s, DEPLOYMENTS)
    await kube.create({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "router-tls", "namespace": NAMESPACE}})
    result = await converge(kube, owner, spec)
    assert "Deployment/llama-router" in result.created
