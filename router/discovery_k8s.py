"""Worker discovery from Kubernetes EndpointSlices, followed with list + watch (kubernetes_asyncio).

The operator labels each pool's Service, and Kubernetes copies the labels onto its EndpointSlices:
`tandem.dev/deployment=<name>`, `tandem.dev/role=prefill|decode`, `tandem.dev/model=<tier>`.
Every ready endpoint of a matching slice is a worker (`conditions.ready` false leaves the set;
unset counts as ready, as the EndpointSlice API says). The worker id is the pod name
(`targetRef.name`). The watcher re-lists after each watch ends or fails, so it never drifts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from router.discovery import EndpointSet, WorkerEndpoint, WorkerRole

log = logging.getLogger(__name__)

DEPLOYMENT_LABEL = "tandem.dev/deployment"
ROLE_LABEL = "tandem.dev/role"
MODEL_LABEL = "tandem.dev/model"


@dataclass(slots=True)
class KubernetesDiscoveryConfig:
    """Which EndpointSlices to follow and how."""

    deployment: str
    namespace: str
    port_name: str = "grpc"
    watch_timeout_s: int = 300
    retry_delay_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.deployment or not self.namespace:
            raise ValueError("KubernetesDiscoveryConfig: deployment and namespace must not be empty")
        if self.watch_timeout_s < 1 or self.retry_delay_s <= 0:
            raise ValueError("KubernetesDiscoveryConfig: watch_timeout_s must be >= 1 and retry_delay_s > 0")

    @property
    def label_selector(self) -> str:
        """The label selector of this deployment's worker slices (not the router's own Service)."""
        roles = ",".join(sorted(role.value for role in WorkerRole))
        return f"{DEPLOYMENT_LABEL}={self.deployment},{ROLE_LABEL} in ({roles})"


async def kubernetes_api_client(kubeconfig: str | None = None) -> k8s_client.ApiClient:
    """An ApiClient from the pod's service account inside a cluster, else from a kubeconfig file."""
    configuration = k8s_client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config(client_configuration=configuration)
    else:
        await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return k8s_client.ApiClient(configuration)


def slice_endpoints(raw: dict, config: KubernetesDiscoveryConfig) -> frozenset[WorkerEndpoint]:
    """The ready workers of one EndpointSlice (as JSON); empty if the slice is not one of ours."""
    labels = (raw.get("metadata") or {}).get("labels") or {}
    if labels.get(DEPLOYMENT_LABEL) != config.deployment:
        return frozenset()
    role, model = labels.get(ROLE_LABEL), labels.get(MODEL_LABEL)
    port = _slice_port(raw.get("ports") or [], config.port_name)
    if role not in {r.value for r in WorkerRole} or not model or port is None:
        log.warning("ignoring EndpointSlice %s: needs labels %s, %s and a port named %r",
                    (raw.get("metadata") or {}).get("name"), ROLE_LABEL, MODEL_LABEL, config.port_name)
        return frozenset()
    is_ipv6 = raw.get("addressType") == "IPv6"
    endpoints = set()
    for endpoint in raw.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        addresses = endpoint.get("addresses") or []
        if conditions.get("ready") is False or not addresses:
            continue
        host = f"[{addresses[0]}]" if is_ipv6 else addresses[0]
        address = f"{host}:{port}"
        worker_id = (endpoint.get("targetRef") or {}).get("name") or endpoint.get("hostname") or address
        endpoints.add(WorkerEndpoint(worker_id, address, WorkerRole(role), model))
    return frozenset(endpoints)


def _slice_port(ports: list[dict], port_name: str) -> int | None:
    for port in ports:
        if port.get("name") == port_name and port.get("port"):
            return int(port["port"])
    if len(ports) == 1 and ports[0].get("port"):
        return int(ports[0]["port"])
    return None


class KubernetesDiscovery:
    """Follows the EndpointSlices of one Tandem deployment."""

    def __init__(self, config: KubernetesDiscoveryConfig, api_client: k8s_client.ApiClient, *,
                 owns_client: bool = False) -> None:
        self.config = config
        self.api_client = api_client
        self.api = k8s_client.DiscoveryV1Api(api_client)
        self._owns_client = owns_client
        self._set = EndpointSet()
        self._slices: dict[str, frozenset[WorkerEndpoint]] = {}
        self._synced = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.last_error: str | None = None

    @classmethod
    async def connect(cls, config: KubernetesDiscoveryConfig, kubeconfig: str | None = None) -> KubernetesDiscovery:
        """A discovery with its own ApiClient (see kubernetes_api_client), closed by close()."""
        return cls(config, await kubernetes_api_client(kubeconfig), owns_client=True)

    def endpoints(self) -> frozenset[WorkerEndpoint]:
        """The ready workers now."""
        return self._set.current

    def watch(self) -> AsyncIterator[frozenset[WorkerEndpoint]]:
        """Yields the ready workers, then again after every change."""
        return self._set.watch()

    async def start(self, timeout_s: float = 30.0) -> None:
        """Starts following; returns after the first successful list (TimeoutError after timeout_s)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kubernetes-discovery")
        try:
            await asyncio.wait_for(self._synced.wait(), timeout_s)
        except TimeoutError:
            await self.close()
            raise TimeoutError(f"no EndpointSlice list for {self.config.namespace}/{self.config.deployment} "
                               f"within {timeout_s:g}s (last error: {self.last_error})") from None

    async def close(self) -> None:
        """Stops following; closes the ApiClient if this discovery created it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._owns_client:
            await self.api_client.close()
            self._owns_client = False

    async def _run(self) -> None:
        while True:
            try:
                resource_version = await self._list()
                self._synced.set()
                await self._follow(resource_version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("EndpointSlice watch of %s/%s failed, re-listing in %.1fs: %s",
                            self.config.namespace, self.config.deployment, self.config.retry_delay_s, exc)
                await asyncio.sleep(self.config.retry_delay_s)

    async def _list(self) -> str | None:
        response = await self.api.list_namespaced_endpoint_slice(
            self.config.namespace, label_selector=self.config.label_selector, _preload_content=False)
        try:
            body = json.loads(await response.read())
        finally:
            response.release()
        self._slices = {item["metadata"]["name"]: slice_endpoints(item, self.config)
                        for item in body.get("items") or []}
        self._publish()
        return (body.get("metadata") or {}).get("resourceVersion")

    async def _follow(self, resource_version: str | None) -> None:
        # "true" spelled as kubectl does: some API emulators accept only the lowercase form.
        kwargs = {"label_selector": self.config.label_selector, "watch": "true",
                  "allow_watch_bookmarks": "true", "timeout_seconds": self.config.watch_timeout_s,
                  "_preload_content": False, "_request_timeout": self.config.watch_timeout_s + 30}
        if resource_version:
            kwargs["resource_version"] = resource_version
        response = await self.api.list_namespaced_endpoint_slice(self.config.namespace, **kwargs)
        try:
            async for line in response.content:
                if line.strip():
                    self._apply(json.loads(line))
        finally:
            response.release()

    def _apply(self, event: dict) -> None:
        kind, raw = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            # For example 410 Gone: the resource version is too old; the caller re-lists.
            raise RuntimeError(f"watch error {raw.get('code')}: {raw.get('message')}")
        name = (raw.get("metadata") or {}).get("name")
        if kind in ("ADDED", "MODIFIED") and name:
            self._slices[name] = slice_endpoints(raw, self.config)
        elif kind == "DELETED" and name:
            self._slices.pop(name, None)
        else:
            return
        self._publish()

    def _publish(self) -> None:
        endpoints = frozenset().union(*self._slices.values())
        if self._set.replace(endpoints):
            log.info("workers of %s: %s", self.config.deployment,
                     ", ".join(sorted(f"{e.role.value}/{e.model}/{e.worker_id}" for e in endpoints)) or "none")
