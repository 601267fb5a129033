"""The control plane's controllers, each one sync pass over the stored objects.

- `Scheduler`: binds pending pods to the one node when their nvidia.com/gpu (and other extended
  resource) limits fit its capacity and their nodeSelector matches its labels; otherwise the pod
  stays Pending with PodScheduled=False/Unschedulable and a FailedScheduling event.
- `DeploymentController`: keeps `replicas` pods of the current template (label
  pod-template-hash), replaces pods of older templates by a rolling update, writes the status
  (replicas, updated, ready, available, observedGeneration, Available/Progressing conditions).
- `EndpointSliceController`: one slice per Service with a selector, with the Service's labels,
  each matching pod's address, its ready/serving/terminating conditions, and named target
  ports resolved through the pods' container ports.
- `GarbageCollector`: deletes objects whose owners are gone.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from typing import Any

from tests.cluster.api import DEPLOYMENTS, ENDPOINTSLICES, EVENTS, NODES, PODS, SERVICES, Api, ApiError
from tests.cluster.events import EventRecorder
from tests.cluster.kubelet import FINALIZER
from tests.cluster.pod_status import now

SLICE_MANAGER = "endpointslice-controller.k8s.io"


def is_ready(pod: dict[str, Any]) -> bool:
    """Whether the pod's Ready condition is True."""
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def is_terminating(obj: dict[str, Any]) -> bool:
    """Whether the object is marked for deletion."""
    return bool(obj["metadata"].get("deletionTimestamp"))


def _matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _limits(pod: dict[str, Any]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for container in pod["spec"]["containers"]:
        resources = container.get("resources") or {}
        for name, value in {**(resources.get("requests") or {}), **(resources.get("limits") or {})}.items():
            if "/" in name:  # extended resources (nvidia.com/gpu, rdma/...): integers
                totals[name] = totals.get(name, 0) + float(value)
    return totals


class Scheduler:
    """Binds pods to the node when they fit."""

    def __init__(self, api: Api, node: dict[str, Any], events: EventRecorder) -> None:
        self.api = api
        self.node = node
        self.events = events

    async def sync(self) -> None:
        """One pass over the unbound pods."""
        pods = list(self.api.items(PODS))
        name = self.node["metadata"]["name"]
        used: dict[str, float] = {}
        for pod in pods:
            if pod["spec"].get("nodeName") == name:
                for key, value in _limits(pod).items():
                    used[key] = used.get(key, 0) + value
        capacity = self.node["status"]["allocatable"]
        labels = self.node["metadata"].get("labels") or {}
        for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", "")):
            if pod["spec"].get("nodeName") or is_terminating(pod):
                continue
            short = [key for key, value in _limits(pod).items()
                     if used.get(key, 0) + value > float(capacity.get(key, 0))]
            if not _matches(labels, pod["spec"].get("nodeSelector") or {}):
                short.append("node(s) didn't match Pod's node affinity/selector")
            meta = pod["metadata"]
            if short:
                reasons = ", ".join(f"Insufficient {key}" if "/" in key else key for key in short)
                message = f"0/1 nodes are available: 1 {reasons}."
                await self._set_scheduled(pod, "False", "Unschedulable", message)
                self.events.warn(pod, "FailedScheduling", message)
                continue
            for key, value in _limits(pod).items():
                used[key] = used.get(key, 0) + value
            await self.api.patch(PODS, meta["namespace"], meta["name"], {"spec": {"nodeName": name}})
            await self._set_scheduled(pod, "True", None, None)

    async def _set_scheduled(self, pod: dict[str, Any], status: str, reason: str | None,
                             message: str | None) -> None:
        old = next((c for c in (pod.get("status") or {}).get("conditions") or []
                    if c["type"] == "PodScheduled"), None)
        condition = {"type": "PodScheduled", "status": status, "lastTransitionTime": now(),
                     **({"reason": reason, "message": message} if reason else {})}
        if old and old.get("status") == status and old.get("message") == condition.get("message"):
            return
        meta = pod["metadata"]
        await self.api.patch(PODS, meta["namespace"], meta["name"],
                             {"status": {"phase": "Pending", "conditions": [condition]}},
                             subresource="status")


def template_hash(template: dict[str, Any]) -> str:
    """A stable hash of a pod template (the pod-template-hash label)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


class DeploymentController:
    """Keeps each Deployment's pods at its replicas and template."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def sync(self) -> None:
        """One pass over every Deployment."""
        pods = list(self.api.items(PODS))
        for deployment in self.api.items(DEPLOYMENTS):
            if not is_terminating(deployment):
                await self._sync_one(deployment, pods)

    async def _sync_one(self, deployment: dict[str, Any], all_pods: list[dict[str, Any]]) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        uid, want = meta["uid"], spec.get("replicas", 1)
        current_hash = template_hash(spec["template"])
        owned = [p for p in all_pods if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]
        alive = [p for p in owned if not is_terminating(p)]
        current = [p for p in alive if p["metadata"]["labels"].get("pod-template-hash") == current_hash]
        old = [p for p in alive if p not in current]
        surge = max(1, math.ceil(want * 0.25))
        max_unavailable = math.floor(want * 0.25)
        num_new = min(want - len(current), want + surge - len(alive))
        for _ in range(max(0, num_new)):
            await self._create_pod(deployment, current_hash)
        # Scale-down removes pods that are not ready first.
        extra = sorted(current, key=is_ready)[:max(0, len(current) - want)]
        num_ready = sum(is_ready(p) for p in alive)
        budget = num_ready - (want - max_unavailable)
        for pod in old + extra:
            if is_ready(pod):
                if budget <= 0 and pod in old:
                    continue
                budget -= 1
            await self.api.delete(PODS, meta["namespace"], pod["metadata"]["name"])
        ready = [p for p in alive if is_ready(p)]
        status = {
            "observedGeneration": meta.get("generation", 1), "replicas": len(alive),
            "updatedReplicas": len(current), "readyReplicas": len(ready),
            "availableReplicas": len(ready), "unavailableReplicas": max(0, want - len(ready)),
            "conditions": [
                {"type": "Available", "status": "True" if len(ready) >= want - max_unavailable else "False",
                 "reason": "MinimumReplicasAvailable" if len(ready) >= want - max_unavailable
                 else "MinimumReplicasUnavailable"},
                {"type": "Progressing", "status": "True",
                 "reason": "NewReplicaSetAvailable" if len(current) == want == len(ready) and not old
                 else "ReplicaSetUpdated"}],
        }
        if {k: v for k, v in (deployment.get("status") or {}).items()} != status:
            await self.api.patch(DEPLOYMENTS, meta["namespace"], meta["name"], {"status": status},
                                 subresource="status")

    async def _create_pod(self, deployment: dict[str, Any], template_id: str) -> None:
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        labels = {**(template["metadata"].get("labels") or {}), "pod-template-hash": template_id}
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": f"{meta['name']}-{template_id[:8]}-{uuid.uuid4().hex[:5]}",
                "namespace": meta["namespace"], "labels": labels,
                "annotations": dict(template["metadata"].get("annotations") or {}),
                "finalizers": [FINALIZER], "creationTimestamp": now(),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": meta["name"], "uid": meta["uid"], "controller": True,
                                     "blockOwnerDeletion": True}]},
            "spec": {"serviceAccountName": "default", "restartPolicy": "Always",
                     **json.loads(json.dumps(template["spec"]))},
            "status": {"phase": "Pending"},
        }
        await self.api.create(PODS, pod)


class EndpointSliceController:
    """Publishes each Service's matching pods as one EndpointSlice."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def sync(self) -> None:
        """One pass over every Service with a selector."""
        pods = list(self.api.items(PODS))
        for service in self.api.items(SERVICES):
            selector = service.get("spec", {}).get("selector")
            if selector and not is_terminating(service):
                await self._sync_one(service, [p for p in pods if p["metadata"]["namespace"] ==
                                               service["metadata"]["namespace"] and
                                               _matches(p["metadata"].get("labels") or {}, selector)])

    async def _sync_one(self, service: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        meta = service["metadata"]
        publish_all = service["spec"].get("publishNotReadyAddresses", False)
        endpoints = []
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            address = (pod.get("status") or {}).get("podIP")
            if not address:
                continue
            ready = (is_ready(pod) or publish_all) and not is_terminating(pod)
            endpoints.append({
                "addresses": [address],
                "conditions": {"ready": ready, "serving": is_ready(pod) or publish_all,
                               "terminating": is_terminating(pod)},
                "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"],
                              "namespace": meta["namespace"], "uid": pod["metadata"]["uid"]},
                "nodeName": pod["spec"].get("nodeName")})
        ports = [{"name": port.get("name", ""), "protocol": port.get("protocol", "TCP"),
                  "port": _target_port(port, pods)} for port in service["spec"].get("ports") or []]
        ports = [port for port in ports if port["port"] is not None]
        name = f"{meta['name']}-{meta['uid'][:5]}"
        labels = {**(meta.get("labels") or {}), "kubernetes.io/service-name": meta["name"],
                  "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER}
        body = {"addressType": "IPv4", "endpoints": endpoints, "ports": ports}
        existing = self.api.get(ENDPOINTSLICES, meta["namespace"], name)
        if existing is None:
            await self.api.create(ENDPOINTSLICES, {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Service",
                                                  "name": meta["name"], "uid": meta["uid"],
                                                  "controller": True, "blockOwnerDeletion": True}]},
                **body})
        elif any(existing.get(k) != v for k, v in body.items()) or existing["metadata"].get("labels") != labels:
            await self.api.patch(ENDPOINTSLICES, meta["namespace"], name,
                                 {"metadata": {"labels": labels}, **body})


def _target_port(port: dict[str, Any], pods: list[dict[str, Any]]) -> int | None:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    for pod in pods:
        for container in pod["spec"]["containers"]:
            for declared in container.get("ports") or []:
                if declared.get("name") == target:
                    return int(declared["containerPort"])
    return None


class GarbageCollector:
    """Deletes namespaced objects whose every owner is gone (background propagation)."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def sync(self) -> None:
        """One pass over every object with owner references."""
        objects = [(resource, obj) for resource in list(self.api.emulator.resources)
                   if resource not in (EVENTS, NODES) for obj in self.api.items(resource)]
        uids = {obj["metadata"].get("uid") for _, obj in objects}
        seen: set[tuple[Any, str, str]] = set()
        for resource, obj in objects:
            meta = obj["metadata"]
            owners = meta.get("ownerReferences") or []
            key = (resource, meta.get("namespace", ""), meta["name"])
            if owners and key not in seen and not is_terminating(obj) and not any(
                    ref.get("uid") in uids for ref in owners):
                seen.add(key)
                try:
                    await self.api.delete(resource, meta.get("namespace"), meta["name"])
                except ApiError:
                    pass
