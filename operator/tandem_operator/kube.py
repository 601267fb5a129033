"""A small async Kubernetes REST client over `kubernetes_asyncio`: plain dicts in, plain dicts out.

The operator works with a handful of kinds as JSON documents (it builds and compares whole
manifests), so one generic client keyed by a `Kind` table is simpler than the typed per-kind APIs.
Authentication, TLS and token refresh stay with `kubernetes_asyncio`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes_asyncio import client, config

logger = logging.getLogger(__name__)

T = TypeVar("T")

MERGE_PATCH = "application/merge-patch+json"
GROUP = "tandem.dev"
VERSION = "v1alpha1"


@dataclass(slots=True, frozen=True)
class Kind:
    """Where one resource kind lives in the API."""

    api_version: str
    kind: str
    plural: str

    def collection_path(self, namespace: str) -> str:
        """The URL path of this kind's objects in a namespace."""
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"

    def object_path(self, namespace: str, name: str, subresource: str | None = None) -> str:
        """The URL path of one object (or of its subresource)."""
        path = f"{self.collection_path(namespace)}/{name}"
        return f"{path}/{subresource}" if subresource else path


KINDS: dict[str, Kind] = {k.kind: k for k in (
    Kind(f"{GROUP}/{VERSION}", "TandemDeployment", "tandemdeployments"),
    Kind("apps/v1", "Deployment", "deployments"),
    Kind("v1", "Service", "services"),
    Kind("v1", "ConfigMap", "configmaps"),
    Kind("v1", "Secret", "secrets"),
    Kind("v1", "ServiceAccount", "serviceaccounts"),
    Kind("v1", "Pod", "pods"),
    Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    Kind("rbac.authorization.k8s.io/v1", "Role", "roles"),
    Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
)}


class KubeError(Exception):
    """A failed API call, with the HTTP status and the server's message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def is_conflict(self) -> bool:
        """409: a stale resourceVersion or an object that already exists."""
        return self.status == 409

    @property
    def is_not_found(self) -> bool:
        """404: no such object."""
        return self.status == 404


class KubeClient:
    """Get, list, create, merge-patch and delete objects of the kinds in `KINDS`."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    @classmethod
    async def connect(cls) -> KubeClient:
        """A client configured in-cluster (service account) or from the kubeconfig file."""
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            # Read KUBECONFIG now: the library's default location is fixed at its import.
            await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"),
                                          client_configuration=configuration)
        return cls(client.ApiClient(configuration))

    @classmethod
    def for_host(cls, host: str) -> KubeClient:
        """A client for an unauthenticated API endpoint (a local mock server in tests)."""
        return cls(client.ApiClient(client.Configuration(host=host)))

    async def close(self) -> None:
        """Closes the HTTP connection pool."""
        await self._api.close()

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            return await self._call("GET", KINDS[kind].object_path(namespace, name))
        except KubeError as exc:
            if exc.is_not_found:
                return None
            raise

    async def list(self, kind: str, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects of a kind in a namespace whose labels include `labels`."""
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        body = await self._call("GET", KINDS[kind].collection_path(namespace),
                                query=[("labelSelector", selector)])
        # Check the labels here too: some API emulators ignore labelSelector.
        return [item for item in body.get("items", []) if _has_labels(item, labels)]

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Creates an object in its metadata.namespace."""
        meta = obj["metadata"]
        return await self._call("POST", KINDS[obj["kind"]].collection_path(meta["namespace"]),
                                body=obj)

    async def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any],
                    subresource: str | None = None) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386); a metadata.resourceVersion in it makes it conditional."""
        return await self._call("PATCH", KINDS[kind].object_path(namespace, name, subresource),
                                body=patch, content_type=MERGE_PATCH)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Deletes an object and lets the garbage collector remove its dependents."""
        try:
            await self._call("DELETE", KINDS[kind].object_path(namespace, name),
                             query=[("propagationPolicy", "Background")])
        except KubeError as exc:
            if not exc.is_not_found:
                raise

    async def _call(self, method: str, path: str, *, body: Any = None,
                    query: list[tuple[str, str]] | None = None,
                    content_type: str = "application/json") -> dict[str, Any]:
        try:
            return await self._api.call_api(
                path, method, query_params=query or [], body=body,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"], _return_http_data_only=True)
        except client.ApiException as exc:
            raise _to_kube_error(exc) from None


def _to_kube_error(exc: client.ApiException) -> KubeError:
    message = exc.reason or ""
    try:
        message = json.loads(exc.body).get("message", message)
    except (TypeError, ValueError, AttributeError):
        pass
    return KubeError(exc.status or 0, exc.reason or "", message)


def _has_labels(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    actual = obj.get("metadata", {}).get("labels") or {}
    return all(actual.get(key) == value for key, value in labels.items())


async def retry_on_conflict(attempt: Callable[[], Awaitable[T]], num_attempts: int = 5) -> T:
    """Runs `attempt` (which must read fresh state itself) again after each 409, up to a limit."""
    for _ in range(num_attempts - 1):
        try:
            return await attempt()
        except KubeError as exc:
            if not exc.is_conflict:
                raise
            logger.info("conflict, retrying with fresh state: %s", exc.message)
    return await attempt()
