"""Shared fixtures: a Kubernetes API emulator (kmock) with resource versions, and API clients to it.

kmock's emulator stores objects and merges patches but tracks no resourceVersion, uid or
generation; `VersionedEmulator` adds them the way the API server does (and answers 409 to a
patch that names a stale resourceVersion), so optimistic concurrency is exercised for real:
`concurrent_writes` lets another client change an object right before the operator writes it.
Nothing here runs controllers: tests mark Deployments ready and collect garbage explicitly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from tandem_operator.kube import KubeClient

from tests.cluster.emulator import VersionedEmulator
from tests.operator.cluster import OWNED, PODS, PVCS, TD


@pytest.fixture
def kmock_options() -> dict[str, Any]:
    return {"cls": VersionedEmulator}


@pytest.fixture
def k8s(kmock: VersionedEmulator) -> VersionedEmulator:
    """The emulator with the resources an operator cluster serves declared for discovery."""
    kmock.resources[TD] = kmock.ResourceInfo(
        kind="TandemDeployment", singular="tandemdeployment", namespaced=True,
        subresources={"status"}, verbs={"get", "list", "watch", "create", "patch", "delete"})
    kmock.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True)
    kmock.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False)
    kmock.resources[PODS] = kmock.ResourceInfo(kind="Pod", namespaced=True)
    kmock.resources[PVCS] = kmock.ResourceInfo(kind="PersistentVolumeClaim", namespaced=True)
    for name, resource in OWNED.items():
        kmock.resources[resource] = kmock.ResourceInfo(kind=name, namespaced=True)
    return kmock


@pytest.fixture
async def kube(k8s: VersionedEmulator) -> AsyncIterator[KubeClient]:
    client = KubeClient.for_host(str(k8s.url).rstrip("/"))
    yield client
    await client.close()


@pytest.fixture
def kubeconfig(k8s: VersionedEmulator, tmp_path, monkeypatch) -> str:
    """A kubeconfig pointing at the emulator, used by kopf's login and the operator's client."""
    path = tmp_path / "kubeconfig"
    server = str(k8s.url).rstrip("/")
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "mock",
        "clusters": [{"name": "mock", "cluster": {"server": server}}],
        "users": [{"name": "mock", "user": {"token": "test"}}],
        "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "mock"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return str(path)
