"""A process kubelet: runs the pods bound to its node and reports their status through the API.

Per pod: a network namespace on the bridge (the pod IP), its volumes (a missing ConfigMap,
Secret or claim keeps it in ContainerCreating, with a FailedMount event), then each container as
a local process with restarts and back-off (restartPolicy Always) and its startup, readiness and
liveness probes. A pod marked for deletion gets SIGTERM, its grace period, then SIGKILL; then the
kubelet's finalizer comes off and the API forgets the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster.api import PODS, Api, ApiError
from tests.cluster.containers import ContainerProcess, EnvError, Image, container_env
from tests.cluster.events import EventRecorder
from tests.cluster.network import Bridge, PodNetwork
from tests.cluster.pod_status import ContainerState, now, pod_status
from tests.cluster.probes import Prober
from tests.cluster.volumes import Mount, ServiceAccountFiles, VolumeError, VolumeManager

log = logging.getLogger(__name__)

FINALIZER = "tests.tandem.dev/kubelet"
MAX_BACKOFF_S = 300.0
SYNC_PERIOD_S = 0.25


@dataclass(slots=True)
class KubeletConfig:
    """What every pod on the node shares."""

    node_name: str
    image: Image
    claims: dict[tuple[str, str], Path]
    service_account: ServiceAccountFiles
    cluster_env: dict[str, str]
    pods_dir: Path
    time_scale: float = 1.0


class PodWorker:
    """Runs one pod until it is deleted."""

    def __init__(self, kubelet: Kubelet, pod: dict[str, Any]) -> None:
        self.kubelet = kubelet
        self.pod = pod
        self.uid = pod["metadata"]["uid"]
        self.name = pod["metadata"]["name"]
        self.dir = kubelet.config.pods_dir / self.name
        self.network: PodNetwork | None = None
        self.containers = [ContainerState(spec) for spec in pod["spec"]["containers"]]
        self.is_stopping = False
        self._mounts: dict[str, Mount] | None = None
        self._manager: VolumeManager | None = None
        self._written: dict[str, Any] | None = None

    @property
    def api(self) -> Api:
        """The API client."""
        return self.kubelet.api

    def log_paths(self) -> list[Path]:
        """The log file of each container."""
        return [self.dir / f"{c.spec['name']}.log" for c in self.containers]

    async def run(self) -> None:
        """Sets the pod up and keeps its containers running until it stops."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.network = self.kubelet.bridge.add_pod(self.uid)
            self.pod.setdefault("status", {})["podIP"] = self.network.address
            while not self.is_stopping:
                if self._mounts is None:
                    self._try_volumes()
                else:
                    await self._sync_containers()
                await self._report()
                await asyncio.sleep(SYNC_PERIOD_S)
        except Exception as exc:  # a fault of the test cluster itself: the test must fail
            log.exception("pod %s: kubelet failure", self.name)
            self.kubelet.errors.append(f"pod {self.name}: {type(exc).__name__}: {exc}")

    def _try_volumes(self) -> None:
        manager = VolumeManager(self.api, self.pod, self.dir, self.kubelet.config.claims,
                                self.kubelet.config.service_account)
        try:
            self._mounts = manager.prepare()
        except VolumeError as exc:
            self.kubelet.events.warn(self.pod, "FailedMount", str(exc))
            return
        self._manager = manager

    async def _sync_containers(self) -> None:
        loop = asyncio.get_running_loop()
        for state in self.containers:
            if state.run is None or state.run.exit_code is not None:
                if state.run is not None:
                    self._record_exit(state, loop.time())
                if loop.time() >= state.restart_at:
                    self._start(state)
                continue
            await self._probe(state)

    def _start(self, state: ContainerState) -> None:
        config = self.kubelet.config
        try:
            env = container_env(self.api, self.pod, state.spec, config.image, config.cluster_env)
        except EnvError as exc:
            state.waiting_reason, state.waiting_message = "CreateContainerConfigError", str(exc)
            return
        assert self.network is not None and self._mounts is not None and self._manager is not None
        mounts = self._manager.mounts(state.spec, self._mounts, self.network.address)
        run_dir = self.dir / "run" / state.spec["name"]
        state.run = ContainerProcess.start(
            netns=self.network.netns, pod=self.pod, container=state.spec, image=config.image,
            env=env, mounts=mounts, run_dir=run_dir,
            log_path=self.dir / f"{state.spec['name']}.log")
        state.waiting_reason, state.is_started, state.is_ready = None, False, False
        state.started_at = now()
        state.probes = {kind: Prober(state.spec[kind], state.spec, self.network.address,
                                     config.time_scale)
                        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
                        if kind in state.spec}
        log.info("pod %s: started container %s", self.name, state.spec["name"])

    def _record_exit(self, state: ContainerState, at: float) -> None:
        assert state.run is not None
        code = state.run.exit_code
        state.last_exit = {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed",
                                          "startedAt": state.started_at, "finishedAt": now()}}
        state.run = None
        state.is_started = state.is_ready = False
        backoff = min(10.0 * 2 ** state.num_restarts, MAX_BACKOFF_S) * self.kubelet.config.time_scale
        state.num_restarts += 1
        state.restart_at = at + backoff
        state.waiting_reason = "CrashLoopBackOff"
        self.kubelet.events.warn(self.pod, "BackOff", f"Back-off restarting failed container "
                                 f"{state.spec['name']} (exit code {code})")

    async def _probe(self, state: ContainerState) -> None:
        startup = state.probes.get("startupProbe")
        if not state.is_started:
            if startup is None:
                state.is_started = True
            else:
                await startup.tick()
                if startup.is_passing:
                    state.is_started = True
                elif startup.has_failed:
                    self._restart(state, "startup probe failed")
                return
        readiness, liveness = state.probes.get("readinessProbe"), state.probes.get("livenessProbe")
        if readiness is None:
            state.is_ready = True
        else:
            await readiness.tick()
            state.is_ready = readiness.is_passing
        if liveness is not None:
            await liveness.tick()
            if liveness.has_failed:
                self._restart(state, "liveness probe failed")

    def _restart(self, state: ContainerState, why: str) -> None:
        assert state.run is not None
        self.kubelet.events.warn(self.pod, "Unhealthy", f"container {state.spec['name']}: {why}")
        state.run.kill()

    def status(self) -> dict[str, Any]:
        """The pod's status as the kubelet reports it."""
        assert self.network is not None
        return pod_status(self.pod, self.containers, self.network.address,
                          self.kubelet.bridge.host_address, is_initialized=self._mounts is not None,
                          is_stopping=self.is_stopping)

    async def _report(self) -> None:
        status = self.status()
        comparable = {**status, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                                               for c in status["conditions"]]}
        if comparable == self._written:
            return
        try:
            self.pod = await self.api.patch(PODS, self.pod["metadata"]["namespace"], self.name,
                                            {"status": status}, subresource="status")
            self._written = comparable
        except ApiError as exc:
            if exc.status == 404:
                self.is_stopping = True
            else:
                log.warning("pod %s: status update failed: %s", self.name, exc)

    async def terminate(self, grace_s: float) -> None:
        """SIGTERM every container, SIGKILL what is left after the grace period, free the network."""
        self.is_stopping = True
        runs = [state.run for state in self.containers if state.run is not None]
        for run in runs:
            run.signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while any(run.exit_code is None for run in runs) and loop.time() < deadline:
            await asyncio.sleep(0.1)
        for run in runs:
            await asyncio.to_thread(run.kill)
        for state in self.containers:
            if state.run is not None:
                self._record_exit(state, loop.time())
        self.kubelet.bridge.remove_pod(self.uid)


class Kubelet:
    """Runs the pods that the scheduler bound to this node."""

    def __init__(self, api: Api, bridge: Bridge, config: KubeletConfig, events: EventRecorder) -> None:
        self.api = api
        self.bridge = bridge
        self.config = config
        self.events = events
        self.workers: dict[str, tuple[PodWorker, asyncio.Task]] = {}
        self.errors: list[str] = []
        self._stopping: dict[str, asyncio.Task] = {}

    async def sync(self) -> None:
        """Starts new pods, stops deleted ones, releases finished deletions."""
        pods = {pod["metadata"]["uid"]: pod for pod in self.api.items(PODS)
                if pod["spec"].get("nodeName") == self.config.node_name}
        for uid, pod in pods.items():
            if pod["metadata"].get("deletionTimestamp"):
                if uid in self.workers and uid not in self._stopping:
                    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                    self._stopping[uid] = asyncio.create_task(self._stop(uid, grace, pod))
                elif uid not in self.workers and uid not in self._stopping:
                    await self._release(pod)
            elif uid not in self.workers:
                worker = PodWorker(self, pod)
                self.workers[uid] = (worker, asyncio.create_task(worker.run(), name=f"pod-{worker.name}"))
            else:
                self.workers[uid][0].pod = pod
        for uid in set(self.workers) - set(pods):
            if uid not in self._stopping:
                self._stopping[uid] = asyncio.create_task(self._stop(uid, 30, None))

    async def _stop(self, uid: str, grace_s: float, pod: dict[str, Any] | None) -> None:
        worker, task = self.workers[uid]
        worker.is_stopping = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.terminate(grace_s)
        if pod is not None:
            await self._release(pod)
        del self.workers[uid]
        del self._stopping[uid]

    async def _release(self, pod: dict[str, Any]) -> None:
        finalizers = [f for f in pod["metadata"].get("finalizers") or [] if f != FINALIZER]
        with contextlib.suppress(ApiError):
            await self.api.patch(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"],
                                 {"metadata": {"finalizers": finalizers}})

    def log_paths(self) -> list[Path]:
        """Every container log of every pod this kubelet ran."""
        return sorted(self.config.pods_dir.glob("*/*.log"))

    async def close(self, grace_s: float) -> None:
        """Stops every pod (SIGTERM, then SIGKILL after grace_s)."""
        for worker, task in list(self.workers.values()):
            worker.is_stopping = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.gather(*(worker.terminate(grace_s) for worker, _ in self.workers.values()),
                             return_exceptions=True)
        for task in self._stopping.values():
            task.cancel()
