"""The API server: kmock's emulator with CRDs that register their kinds and validate their objects.

It listens twice on one state: plain HTTP on 127.0.0.1 for the test, the operator and the
controllers, and HTTPS on the bridge address for pods (what in-cluster configuration expects).
`Api` is the small client the controllers write through, so every change reaches watchers.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import aiohttp.web
import attrs
import jsonschema
import kmock

from tests.cluster.emulator import VersionedEmulator
from tests.cluster.tls import ServingCert
from tests.helm.crd_schema import validator

CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NODES = kmock.resource("", "v1", "nodes")
PODS = kmock.resource("", "v1", "pods")
SERVICES = kmock.resource("", "v1", "services")
SECRETS = kmock.resource("", "v1", "secrets")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
PVCS = kmock.resource("", "v1", "persistentvolumeclaims")
EVENTS = kmock.resource("", "v1", "events")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
ENDPOINTSLICES = kmock.resource("discovery.k8s.io", "v1", "endpointslices")

# Built-in kinds the cluster serves: resource -> (kind, namespaced, subresources).
BUILTIN = {
    NODES: ("Node", False, {"status"}),
    kmock.resource("", "v1", "namespaces"): ("Namespace", False, set()),
    PODS: ("Pod", True, {"status"}),
    SERVICES: ("Service", True, {"status"}),
    SECRETS: ("Secret", True, set()),
    CONFIGMAPS: ("ConfigMap", True, set()),
    PVCS: ("PersistentVolumeClaim", True, {"status"}),
    EVENTS: ("Event", True, set()),
    kmock.resource("", "v1", "serviceaccounts"): ("ServiceAccount", True, set()),
    DEPLOYMENTS: ("Deployment", True, {"status", "scale"}),
    ENDPOINTSLICES: ("EndpointSlice", True, set()),
    kmock.resource("rbac.authorization.k8s.io", "v1", "roles"): ("Role", True, set()),
    kmock.resource("rbac.authorization.k8s.io", "v1", "rolebindings"): ("RoleBinding", True, set()),
    kmock.resource("policy", "v1", "poddisruptionbudgets"): ("PodDisruptionBudget", True, {"status"}),
    CRDS: ("CustomResourceDefinition", False, set()),
}


@attrs.define(kw_only=True)
class ClusterEmulator(VersionedEmulator):
    """The versioned emulator plus CRDs: creating one serves its kind and validates its objects
    against the CRD's OpenAPI schema (unknown fields rejected), as the API server does."""

    _validators: dict[Any, jsonschema.Draft4Validator] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource, (kind, namespaced, subresources) in BUILTIN.items():
            self.resources[resource] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, subresources=subresources,
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"})

    async def _handle(self, request: kmock.Request):
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if request.resource == CRDS and request.action == kmock.action.CREATE:
            self._register(request.data)
        elif request.resource in self._validators and isinstance(request.data, dict) and (
                request.action in (kmock.action.CREATE, kmock.action.UPDATE)):
            # The API server prunes nulls of fields that are not nullable (none of ours are);
            # a null directly in a merge patch's object means "remove the field" instead.
            prune_nulls(request.data, keep_top=request.action == kmock.action.UPDATE)
            self._validate(request)
        return await super()._handle(request)

    def _register(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            resource = kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
            self.resources[resource] = kmock.ResourceInfo(
                kind=spec["names"]["kind"], singular=spec["names"].get("singular"),
                namespaced=spec.get("scope") == "Namespaced",
                shortnames=set(spec["names"].get("shortNames") or []),
                subresources=set(version.get("subresources") or {}),
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"})
            self._validators[resource] = validator(
                {"spec": {"versions": [version]}})

    def _validate(self, request: kmock.Request) -> None:
        current = self._current(request) if request.action == kmock.action.UPDATE else None
        document = merge_patch(copy.deepcopy(current or {}), request.data)
        document = {key: value for key, value in document.items() if key != "metadata"}
        errors = sorted(self._validators[request.resource].iter_errors(document), key=str)
        if errors:
            where = "/".join(str(part) for part in errors[0].absolute_path) or "/"
            raise kmock.KubernetesError(status=422, reason="Invalid",
                                        message=f"{where}: {errors[0].message}")


def prune_nulls(value: Any, keep_top: bool = False) -> Any:
    """Drops null values in place: everywhere, or (keep_top) only inside lists."""
    if isinstance(value, dict):
        for key in [k for k, v in value.items() if v is None and not keep_top]:
            del value[key]
        for item in value.values():
            prune_nulls(item, keep_top=keep_top)
    elif isinstance(value, list):
        for item in value:
            prune_nulls(item)
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """Applies a JSON merge patch (RFC 7386)."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target


async def serve_tls(emulator: ClusterEmulator, host: str, port: int,
                    cert: ServingCert) -> aiohttp.web.BaseRunner:
    """Serves the emulator over HTTPS at host:port (the pods' way in); returns the runner to close."""
    # Watches never end by themselves: do not wait for them when the cluster stops.
    runner = aiohttp.web.ServerRunner(aiohttp.web.Server(emulator), shutdown_timeout=1.0)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, host, port, ssl_context=cert.server_context())
    await site.start()
    return runner


def path_of(resource: kmock.resource, namespace: str | None, name: str | None = None,
            subresource: str | None = None) -> str:
    """The URL path of a collection, an object or an object's subresource."""
    base = "/api/v1" if resource.group == "" else f"/apis/{resource.group}/{resource.version}"
    if namespace is not None:
        base += f"/namespaces/{namespace}"
    base += f"/{resource.plural}"
    if name is not None:
        base += f"/{name}"
    if subresource is not None:
        base += f"/{subresource}"
    return base


class ApiError(Exception):
    """A failed API call."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


class Api:
    """Reads straight from the emulator's store; writes through HTTP so watchers see them."""

    def __init__(self, emulator: ClusterEmulator, session: aiohttp.ClientSession, url: str) -> None:
        self.emulator = emulator
        self._session = session
        self._url = url.rstrip("/")

    def items(self, resource: kmock.resource, namespace: str | None = None) -> Iterator[dict[str, Any]]:
        """Copies of the stored objects of a resource (in a namespace, or all)."""
        for (res, ns, _), obj in list(self.emulator.objects.items()):
            if res == resource and not obj.deleted and (namespace is None or ns == namespace):
                yield copy.deepcopy(obj.raw)

    def get(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A copy of one stored object, or None."""
        key = (resource, namespace, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        return copy.deepcopy(self.emulator.objects[key].raw)

    async def create(self, resource: kmock.resource, body: dict[str, Any]) -> dict[str, Any]:
        """Creates an object (in its metadata.namespace for namespaced kinds)."""
        return await self._call("POST", path_of(resource, body["metadata"].get("namespace")), body)

    async def patch(self, resource: kmock.resource, namespace: str | None, name: str,
                    patch: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        """A JSON merge patch."""
        return await self._call("PATCH", path_of(resource, namespace, name, subresource), patch,
                                content_type="application/merge-patch+json")

    async def delete(self, resource: kmock.resource, namespace: str | None, name: str) -> None:
        """Deletes an object; a missing one is fine."""
        try:
            await self._call("DELETE", path_of(resource, namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def _call(self, method: str, path: str, body: Any = None,
                    content_type: str = "application/json") -> dict[str, Any]:
        async with self._session.request(
                method, self._url + path, data=None if body is None else json.dumps(body),
                headers={"Content-Type": content_type}) as response:
            text = await response.text()
            if response.status >= 300:
                raise ApiError(response.status, text[:500])
            return json.loads(text) if text else {}
