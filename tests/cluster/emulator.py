"""kmock's Kubernetes emulator with what a real API server adds: uid, resourceVersion, generation.

kmock's emulator stores objects and merges patches but tracks no resourceVersion, uid or
generation, and ignores `labelSelector`; `VersionedEmulator` adds them the way the API server does
(and answers 409 to a patch that names a stale resourceVersion), so optimistic concurrency is
exercised for real: `concurrent_writes` lets another client change an object right before the
operator writes it. Lists and watches return only what their label selector selects.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import attrs
import kmock

from tests.cluster.label_selector import parse_selector, selects


@attrs.define(kw_only=True)
class VersionedEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus uid, resourceVersion, generation and stale-write conflicts."""

    _last_version: int = attrs.field(default=0, init=False)
    # (resource, name) -> a merge patch another client applies just before our next write to it.
    concurrent_writes: dict[tuple[Any, str], dict[str, Any]] = attrs.field(factory=dict, init=False)

    async def _handle(self, request: kmock.Request):
        if request.resource is not None and request.action == kmock.action.CREATE:
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["generation"] = 1
            meta["resourceVersion"] = self._next_version()
        elif (request.resource is not None and request.action == kmock.action.UPDATE
              and request.name is not None and self._current(request) is not None):
            foreign = self.concurrent_writes.pop((request.resource, request.name), None)
            if foreign is not None:
                key = (request.resource, request.namespace, request.name)
                self.objects[key].patch({**foreign, "metadata": {
                    **foreign.get("metadata", {}), "resourceVersion": self._next_version()}})
            self._check_version(request)
            version = self._next_version()
            if isinstance(request.data, list):  # a JSON patch (kopf's finalizers)
                request.data.append({"op": "add", "path": "/metadata/resourceVersion",
                                     "value": version})
            else:  # a JSON merge patch
                meta = request.data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                if "spec" in request.data and request.subresource is None:
                    meta["generation"] = self._current(request)["metadata"].get("generation", 1) + 1
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        body = await super()._serve_list(request)
        body["metadata"]["resourceVersion"] = str(self._last_version)
        selector = _selector(request)
        body["items"] = [item for item in body["items"]
                         if selects(selector, item.get("metadata", {}).get("labels"))]
        return body

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        # As the API server does, a watch from a listed resourceVersion does not replay objects
        # the list already gave (kmock's own watch replays every object).
        since = request.params.get("resourceVersion", "")
        selector = _selector(request)
        async for event in super()._serve_watch(request):
            if not isinstance(event, dict):
                yield event
                continue
            meta = event.get("object", {}).get("metadata", {})
            if not selects(selector, meta.get("labels")):
                continue
            if (since.isdigit() and event.get("type") == "ADDED"
                    and int(meta.get("resourceVersion", 0)) <= int(since)):
                continue
            yield event

    def _next_version(self) -> str:
        self._last_version += 1
        return str(self._last_version)

    def _current(self, request: kmock.Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def _check_version(self, request: kmock.Request) -> None:
        # A merge patch naming a resourceVersion is conditional (409 when stale); a JSON patch
        # tests it with a "test" operation (422 when stale), as the API server does.
        have = self._current(request)["metadata"].get("resourceVersion")
        if isinstance(request.data, list):
            tests = [op.get("value") for op in request.data
                     if op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion"]
            if tests and tests[0] != have:
                raise kmock.KubernetesError(status=422, reason="Invalid",
                                            message=f"test failed: resourceVersion is {have}")
            return
        wanted = (request.data.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != have:
            raise kmock.KubernetesError(
                status=409, reason="Conflict",
                message=f"the object has been modified: resourceVersion {wanted} != {have}")


def _selector(request: kmock.Request) -> list:
    try:
        return parse_selector(request.params.get("labelSelector", ""))
    except ValueError as exc:
        raise kmock.KubernetesError(status=400, reason="BadRequest", message=str(exc)) from None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
