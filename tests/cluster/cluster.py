"""`Cluster`: the API server, one node with its kubelet, and the controllers, started and torn down together.

    async with Cluster.start(tmp_path / "cluster", num_gpus=0) as cluster:
        cluster.add_claim("serving", "models", model_folder)
        await cluster.apply(manifest)
        await cluster.wait_for(lambda: ..., "what we wait for")

Teardown (also on failure): every pod process gets SIGTERM then SIGKILL, the pod namespaces and
the bridge are removed, the servers close. Failures of the fixture itself (a controller raising)
fail the test at teardown rather than pass unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import yaml

from tests.cluster.api import (
    ENDPOINTSLICES,
    NODES,
    PODS,
    PVCS,
    Api,
    ApiError,
    ClusterEmulator,
    serve_tls,
)
from tests.cluster.containers import Image
from tests.cluster.controllers import DeploymentController, EndpointSliceController, GarbageCollector, Scheduler
from tests.cluster.events import EventRecorder
from tests.cluster.kubelet import Kubelet, KubeletConfig
from tests.cluster.pod_status import now
from tests.cluster.network import Bridge
from tests.cluster.tls import make_serving_cert
from tests.cluster.volumes import ServiceAccountFiles

log = logging.getLogger(__name__)

API_PORT = 6443
NODE_NAME = "node-0"
SYNC_PERIOD_S = 0.25
MAX_RESTARTS = 3  # a container that failed this often fails the wait at once


class Cluster:
    """A running emulated cluster (see the module docstring)."""

    def __init__(self, api: Api, bridge: Bridge, kubelet: Kubelet, workdir: Path, local_url: str,
                 node: dict[str, Any]) -> None:
        self.api = api
        self.bridge = bridge
        self.kubelet = kubelet
        self.workdir = workdir
        self.local_url = local_url
        self.node = node
        self.errors: list[str] = []
        events = kubelet.events
        self._controllers = [Scheduler(api, node, events), DeploymentController(api),
                             kubelet, EndpointSliceController(api), GarbageCollector(api)]

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, workdir: Path, *, num_gpus: int = 0,
                    time_scale: float = 0.2) -> AsyncIterator[Cluster]:
        """Starts everything; `time_scale` shortens probe periods and back-offs for tests."""
        workdir.mkdir(parents=True, exist_ok=True)
        bridge = Bridge.create()
        try:
            cert = make_serving_cert(workdir / "pki", [bridge.host_address, "127.0.0.1"])
            async with ClusterEmulator() as emulator, kmock.Server(emulator) as server:
                tls = await serve_tls(emulator, bridge.host_address, API_PORT, cert)
                session = aiohttp.ClientSession()
                try:
                    api = Api(emulator, session, str(server.url))
                    node = await _create_node(api, num_gpus)
                    config = KubeletConfig(
                        node_name=NODE_NAME, image=Image(), claims={},
                        service_account=ServiceAccountFiles(secrets.token_hex(16),
                                                            cert.ca_cert.read_bytes()),
                        cluster_env={"KUBERNETES_SERVICE_HOST": bridge.host_address,
                                     "KUBERNETES_SERVICE_PORT": str(API_PORT),
                                     "KUBERNETES_SERVICE_PORT_HTTPS": str(API_PORT)},
                        pods_dir=workdir / "pods", time_scale=time_scale)
                    kubelet = Kubelet(api, bridge, config, EventRecorder(api, "kubelet"))
                    cluster = cls(api, bridge, kubelet, workdir, str(server.url).rstrip("/"), node)
                    loop_task = asyncio.create_task(cluster._run(), name="cluster-controllers")
                    try:
                        yield cluster
                    finally:
                        loop_task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await loop_task
                        await kubelet.close(grace_s=10.0)
                    problems = cluster.errors + kubelet.errors
                    assert not problems, f"the test cluster itself failed: {problems}"
                finally:
                    await session.close()
                    await tls.cleanup()
        finally:
            bridge.close()

    async def _run(self) -> None:
        while True:
            for controller in self._controllers:
                try:
                    await controller.sync()
                except ApiError as exc:
                    log.info("%s: %s (retrying next pass)", type(controller).__name__, exc)
                except Exception as exc:
                    log.exception("%s failed", type(controller).__name__)
                    self.errors.append(f"{type(controller).__name__}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(SYNC_PERIOD_S)

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for clients on this machine (the operator, kubectl-like test code)."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.local_url}}],
            "users": [{"name": "test", "user": {"token": "test"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
        return path

    def resource_of(self, manifest: dict[str, Any]) -> kmock.resource:
        """The served resource of a manifest's apiVersion and kind."""
        group, _, version = manifest["apiVersion"].rpartition("/")
        for resource, info in self.api.emulator.resources.items():
            if resource.group == group and resource.version == version and info.kind == manifest["kind"]:
                return resource
        raise LookupError(f"the cluster serves no {manifest['kind']} in {manifest['apiVersion']}")

    async def apply(self, manifest: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Creates the object, or merge-patches it when it exists (like `kubectl apply`)."""
        manifest = {**manifest, "metadata": dict(manifest["metadata"])}
        resource = self.resource_of(manifest)
        info = self.api.emulator.resources[resource]
        if info.namespaced:
            manifest["metadata"].setdefault("namespace", namespace or "default")
        name, ns = manifest["metadata"]["name"], manifest["metadata"].get("namespace")
        if self.api.get(resource, ns, name) is None:
            return await self.api.create(resource, manifest)
        return await self.api.patch(resource, ns, name, manifest)

    async def delete(self, manifest: dict[str, Any], namespace: str | None = None) -> None:
        """Deletes the object a manifest names."""
        meta = manifest["metadata"]
        await self.api.delete(self.resource_of(manifest), meta.get("namespace", namespace), meta["name"])

    async def add_claim(self, namespace: str, name: str, host_folder: Path) -> None:
        """A bound PersistentVolumeClaim whose volume is a host folder."""
        self.kubelet.config.claims[(namespace, name)] = host_folder
        await self.api.create(PVCS, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound"}})

    def ready_addresses(self, namespace: str, service: str, port_name: str) -> list[str]:
        """host:port of the Service's ready endpoints, read from its EndpointSlices."""
        addresses = []
        for item in self.api.items(ENDPOINTSLICES, namespace):
            if (item["metadata"].get("labels") or {}).get("kubernetes.io/service-name") != service:
                continue
            port = next((p["port"] for p in item.get("ports") or [] if p.get("name") == port_name), None)
            for endpoint in item.get("endpoints") or []:
                if port is not None and endpoint["conditions"].get("ready"):
                    addresses.append(f"{endpoint['addresses'][0]}:{port}")
        return sorted(addresses)

    async def wait_for(self, condition: Callable[[], Any], what: str, timeout_s: float = 180.0) -> Any:
        """Polls until `condition()` is truthy and returns its value; fails naming `what`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            value = condition()
            if value:
                return value
            problems = self.errors + self.kubelet.errors
            assert not problems, f"the test cluster itself failed: {problems}"
            crashing = self.crash_looping()
            assert not crashing, f"waiting for {what}, but containers keep failing: {crashing}"
            assert loop.time() < deadline, f"timed out after {timeout_s:g}s waiting for {what}"
            await asyncio.sleep(0.25)

    def crash_looping(self, num_restarts: int = MAX_RESTARTS) -> list[str]:
        """Containers that failed at least `num_restarts` times (pod/container: last exit code)."""
        crashing = []
        for pod in self.api.items(PODS):
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                if status.get("restartCount", 0) >= num_restarts:
                    code = (status.get("lastState") or {}).get("terminated", {}).get("exitCode")
                    crashing.append(f"{pod['metadata']['name']}/{status['name']}: exit {code}")
        return crashing

    def log_tails(self, num_lines: int = 60) -> str:
        """The last lines of every container's log, for failure reports."""
        parts = []
        for path in self.kubelet.log_paths():
            lines = path.read_text(errors="replace").splitlines()[-num_lines:]
            parts.append(f"----- {path.parent.name}/{path.stem} -----\n" + "\n".join(lines))
        return "\n".join(parts)


async def _create_node(api: Api, num_gpus: int) -> dict[str, Any]:
    capacity = {"cpu": "2", "memory": "8Gi", "pods": "110", "nvidia.com/gpu": str(num_gpus)}
    return await api.create(NODES, {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME,
                                                   "kubernetes.io/os": "linux"}},
        "status": {"capacity": capacity, "allocatable": capacity,
                   "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now()}]}})
