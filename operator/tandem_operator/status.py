"""The TandemDeployment status: per-workload replica counts and Ready/Progressing/Degraded conditions."""

from __future__ import annotations

import datetime
import enum
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tandem.policy.autoscaling import Phase

from tandem_operator.autoscale.mode import ScalingMode, pool_scaling_mode
from tandem_operator.naming import LABEL_MODEL, LABEL_ROLE, Role, pool_name, router_name
from tandem_operator.spec import DeploymentSpec, TierSpec


class ConditionType(str, enum.Enum):
    """The conditions every TandemDeployment reports."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


@dataclass(slots=True, frozen=True)
class Problem:
    """Why the operator could not (yet) reconcile: a bad spec (degraded) or a wait."""

    reason: str
    message: str
    is_degraded: bool


@dataclass(slots=True, frozen=True)
class WorkloadState:
    """One Deployment's observed state."""

    name: str
    role: Role
    tier: str | None
    num_desired: int
    num_ready: int
    is_rolled_out: bool
    failure: str | None

    @property
    def is_ready(self) -> bool:
        """All desired replicas run the current template and are ready."""
        return self.is_rolled_out and self.num_ready >= self.num_desired and not self.failure


def workload_state(deployment: Mapping[str, Any]) -> WorkloadState:
    """Reads a live Deployment (spec, status and conditions)."""
    meta, status = deployment["metadata"], deployment.get("status") or {}
    labels = meta.get("labels") or {}
    num_desired = deployment.get("spec", {}).get("replicas", 1)
    generation = meta.get("generation")
    is_observed = generation is None or status.get("observedGeneration", 0) >= generation
    failure = None
    for condition in status.get("conditions") or []:
        if ((condition.get("type") == "ReplicaFailure" and condition.get("status") == "True")
                or condition.get("reason") == "ProgressDeadlineExceeded"):
            failure = f"{meta['name']}: {condition.get('message') or condition.get('reason')}"
    return WorkloadState(
        name=meta["name"], role=Role(labels[LABEL_ROLE]), tier=labels.get(LABEL_MODEL),
        num_desired=num_desired, num_ready=status.get("readyReplicas") or 0,
        is_rolled_out=is_observed and (status.get("updatedReplicas") or 0) >= num_desired,
        failure=failure)


def build_status(spec: DeploymentSpec | None, generation: int | None,
                 states: Iterable[WorkloadState], previous: Mapping[str, Any] | None,
                 problem: Problem | None = None) -> dict[str, Any]:
    """The status to write: replica summaries, workloads and conditions (keeping transition times)."""
    states = sorted(states, key=lambda state: state.name)
    modes = pool_modes(spec) if spec is not None else {}
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "routerReplicas": _replicas(states, Role.ROUTER),
        "prefillReplicas": _replicas(states, Role.PREFILL),
        "decodeReplicas": _replicas(states, Role.DECODE),
        "workloads": [_workload(s, modes.get(s.name)) for s in states],
        "conditions": _conditions(states, expected_workloads(spec) if spec else [], problem,
                                  generation, (previous or {}).get("conditions")),
    }
    if spec is not None:
        status["model"] = ",".join(_model_name(tier) for tier in spec.tiers)
    return status


def pool_modes(spec: DeploymentSpec) -> dict[str, ScalingMode]:
    """Who sizes each pool Deployment (by name): the operator, an external scaler or the spec."""
    return {pool_name(spec.name, tier.name, Role.of_phase(phase)): pool_scaling_mode(
                spec.autoscaling, tier.prefill if phase is Phase.PREFILL else tier.decode)
            for tier in spec.tiers for phase in Phase}


def _workload(state: WorkloadState, mode: ScalingMode | None) -> dict[str, Any]:
    workload = {"name": state.name, "role": state.role.value, "tier": state.tier,
                "readyReplicas": state.num_ready, "desiredReplicas": state.num_desired}
    if mode is not None:  # pools only: the router's size always comes from the spec
        workload["scaling"] = mode.value
    return workload


def expected_workloads(spec: DeploymentSpec) -> list[str]:
    """The Deployments a spec asks for: the router and a prefill and a decode pool per tier."""
    return [router_name(spec.name)] + [pool_name(spec.name, tier.name, Role.of_phase(phase))
                                       for tier in spec.tiers for phase in Phase]


def _conditions(states: list[WorkloadState], expected: list[str], problem: Problem | None,
                generation: int | None,
                previous: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if problem is not None:
        ready = (False, problem.reason, problem.message)
        progressing = (not problem.is_degraded, problem.reason, problem.message)
        degraded = (problem.is_degraded, problem.reason, problem.message)
    else:
        # A Deployment that should exist and does not (not created yet, or deleted) is pending.
        missing = sorted(set(expected) - {s.name for s in states})
        summary = ", ".join([f"{s.name} {s.num_ready}/{s.num_desired}" for s in states]
                            + [f"{name} missing" for name in missing])
        pending = [f"{s.name} {s.num_ready}/{s.num_desired}" for s in states
                   if not s.is_ready and not s.failure] + [f"{name} missing" for name in missing]
        failures = [s.failure for s in states if s.failure]
        is_ready = bool(states) and not pending and not failures
        ready = (is_ready, "AllReady" if is_ready else "NotReady", summary)
        progressing = (bool(pending), "RollingOut" if pending else "Stable", ", ".join(pending))
        degraded = (bool(failures), "WorkloadFailed" if failures else "Healthy", "; ".join(failures))
    values = {ConditionType.READY: ready, ConditionType.PROGRESSING: progressing,
              ConditionType.DEGRADED: degraded}
    before = {c.get("type"): c for c in previous or []}
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = []
    for kind, (is_true, reason, message) in values.items():
        text = "True" if is_true else "False"
        old = before.get(kind.value) or {}
        conditions.append({
            "type": kind.value, "status": text, "reason": reason, "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": old.get("lastTransitionTime", now)
            if old.get("status") == text else now,
        })
    return conditions


def _replicas(states: list[WorkloadState], role: Role) -> str:
    chosen = [s for s in states if s.role is role]
    return f"{sum(s.num_ready for s in chosen)}/{sum(s.num_desired for s in chosen)}"


def _model_name(tier: TierSpec) -> str:
    model = tier.model
    return model.served_name or posixpath.basename(model.path.rstrip("/")) or tier.name
