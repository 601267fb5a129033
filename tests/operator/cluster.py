"""Helpers that stand in for the rest of a cluster around the operator under test.

The emulator runs no controllers: `mark_ready` plays the Deployment controller and kubelet,
`collect_garbage` plays the garbage collector (deletes objects whose owner is gone).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import kmock

NAMESPACE = "serving"
IMAGE = "registry.example/tandem:test"
TD = kmock.resource("tandem.dev", "v1alpha1", "tandemdeployments")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
SERVICES = kmock.resource("", "v1", "services")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
PODS = kmock.resource("", "v1", "pods")
PVCS = kmock.resource("", "v1", "persistentvolumeclaims")
OWNED = {
    "Deployment": DEPLOYMENTS, "Service": SERVICES, "ConfigMap": CONFIGMAPS,
    "ServiceAccount": kmock.resource("", "v1", "serviceaccounts"),
    "Role": kmock.resource("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": kmock.resource("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "PodDisruptionBudget": kmock.resource("policy", "v1", "poddisruptionbudgets"),
}
TD_PATH = f"/apis/tandem.dev/v1alpha1/namespaces/{NAMESPACE}/tandemdeployments"


def td_body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A TandemDeployment manifest."""
    return {"apiVersion": "tandem.dev/v1alpha1", "kind": "TandemDeployment",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


async def create_td(k8s: kmock.KubernetesEmulator, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Creates a TandemDeployment through the API, as kubectl would."""
    response = await k8s.post(TD_PATH, json=td_body(name, spec))
    assert response.status in (200, 201), await response.text()
    return await response.json()


async def patch_td(k8s: kmock.KubernetesEmulator, name: str, patch: dict[str, Any]) -> None:
    """Merge-patches a TandemDeployment through the API."""
    response = await k8s.patch(f"{TD_PATH}/{name}", json=patch,
                               headers={"Content-Type": "application/merge-patch+json"})
    assert response.status == 200, await response.text()


async def delete_td(k8s: kmock.KubernetesEmulator, name: str) -> None:
    """Deletes a TandemDeployment through the API."""
    response = await k8s.delete(f"{TD_PATH}/{name}")
    assert response.status == 200, await response.text()


def live(k8s: kmock.KubernetesEmulator, resource: kmock.resource) -> dict[str, dict[str, Any]]:
    """The stored objects of a resource in the test namespace, by name."""
    return {name: copy.deepcopy(obj.raw) for (res, ns, name), obj in k8s.objects.items()
            if res == resource and ns == NAMESPACE and not obj.deleted}


def owned_names(k8s: kmock.KubernetesEmulator) -> set[tuple[str, str]]:
    """(kind, name) of every stored object of the kinds the operator manages."""
    return {(kind, name) for kind, resource in OWNED.items() for name in live(k8s, resource)}


def mark_ready(k8s: kmock.KubernetesEmulator) -> None:
    """Plays the Deployment controller: every Deployment has all its replicas updated and ready."""
    for name, deployment in live(k8s, DEPLOYMENTS).items():
        replicas = deployment["spec"].get("replicas", 1)
        k8s.objects[DEPLOYMENTS, NAMESPACE, name]["status"] = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas}


def collect_garbage(k8s: kmock.KubernetesEmulator) -> int:
    """Plays the garbage collector: deletes objects whose owners no longer exist."""
    uids = {obj.raw["metadata"].get("uid") for obj in k8s.objects.values() if not obj.deleted}
    doomed = [key for key, obj in k8s.objects.items() if not obj.deleted and any(
        ref.get("uid") not in uids for ref in obj.raw["metadata"].get("ownerReferences", []))]
    for key in doomed:
        k8s.objects[key].delete()
    return len(doomed)


def writes(k8s: kmock.KubernetesEmulator, resource: kmock.resource) -> list[kmock.Request]:
    """Create, patch and delete requests to a resource so far."""
    return [request for request in k8s if request.resource == resource
            and request.method in (kmock.method.POST, kmock.method.PATCH, kmock.method.DELETE)]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Polls until `condition()` holds (the operator reacts asynchronously); fails after a limit."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)
