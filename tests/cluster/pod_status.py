"""What the kubelet reports about a pod: phase, address, conditions and each container's state."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from tests.cluster.containers import ContainerProcess
from tests.cluster.probes import Prober


def now() -> str:
    """An RFC 3339 timestamp, as the API writes them."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class ContainerState:
    """One container of a running pod."""

    spec: dict[str, Any]
    run: ContainerProcess | None = None
    num_restarts: int = 0
    is_started: bool = False
    is_ready: bool = False
    waiting_reason: str | None = "ContainerCreating"
    waiting_message: str = ""
    last_exit: dict[str, Any] | None = None
    restart_at: float = 0.0
    started_at: str = ""
    probes: dict[str, Prober] = field(default_factory=dict)


def container_status(state: ContainerState) -> dict[str, Any]:
    """One entry of status.containerStatuses."""
    entry: dict[str, Any] = {"name": state.spec["name"], "image": state.spec.get("image", ""),
                             "ready": state.is_ready, "started": state.is_started,
                             "restartCount": state.num_restarts}
    if state.run is not None:
        entry["state"] = {"running": {"startedAt": state.started_at}}
    else:
        waiting = {"reason": state.waiting_reason or "ContainerCreating"}
        if state.waiting_message:
            waiting["message"] = state.waiting_message
        entry["state"] = {"waiting": waiting}
    if state.last_exit:
        entry["lastState"] = state.last_exit
    return entry


def pod_status(pod: dict[str, Any], containers: list[ContainerState], address: str, host_address: str,
               *, is_initialized: bool, is_stopping: bool) -> dict[str, Any]:
    """The pod's status; the scheduler's PodScheduled condition is kept as it is."""
    is_ready = all(state.is_ready for state in containers) and not is_stopping
    ever_ran = all(state.run is not None or state.last_exit for state in containers)
    before = pod.get("status") or {}
    conditions = [c for c in before.get("conditions") or [] if c["type"] == "PodScheduled"]
    conditions += [_condition(before, "Initialized", is_initialized),
                   _condition(before, "ContainersReady", is_ready),
                   _condition(before, "Ready", is_ready)]
    return {"phase": "Running" if ever_ran else "Pending", "podIP": address,
            "podIPs": [{"ip": address}], "hostIP": host_address,
            "startTime": before.get("startTime") or now(), "conditions": conditions,
            "containerStatuses": [container_status(state) for state in containers]}


def _condition(before: dict[str, Any], kind: str, is_true: bool) -> dict[str, Any]:
    old = next((c for c in before.get("conditions") or [] if c["type"] == kind), {})
    text = "True" if is_true else "False"
    changed = old.get("status") != text
    return {"type": kind, "status": text,
            "lastTransitionTime": now() if changed else old.get("lastTransitionTime", now())}
