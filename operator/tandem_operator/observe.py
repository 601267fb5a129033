"""One tick of a TandemDeployment's background loop: repair drift, observe the pools, autoscale,
write status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tandem_operator.autoscale.conditions import replicas_stalled_condition
from tandem_operator.autoscale.controller import DeploymentAutoscaler, PoolDecision
from tandem_operator.kube import KubeClient
from tandem_operator.manifests.objects import Owner
from tandem_operator.reconcile import converge, list_owned, write_status
from tandem_operator.spec import DeploymentSpec
from tandem_operator.status import Problem, build_status, workload_state


@dataclass(slots=True, frozen=True)
class Observation:
    """What one tick saw and did."""

    status: dict[str, Any]
    decisions: list[PoolDecision]

    @property
    def changes(self) -> list[PoolDecision]:
        """The decisions that changed a pool's size."""
        return [decision for decision in self.decisions if decision.is_change]


async def observe_and_scale(kube: KubeClient, owner: Owner, spec: DeploymentSpec,
                            autoscaler: DeploymentAutoscaler, now: float,
                            previous: Mapping[str, Any], generation: int | None) -> Observation | None:
    """Reconciles again (objects deleted by hand come back), reads the pools, runs the autoscaler
    on them and writes the status, with any problem that still stands; None before the reconciler
    has created any workload. `generation` is the one `spec` was read from: once this tick has
    applied that spec, the status says so, even if the change handler has not run (yet)."""
    outcome = await converge(kube, owner, spec)
    problem = outcome if isinstance(outcome, Problem) else None
    observed = previous.get("observedGeneration") if problem or generation is None else generation
    # A reconcile that went through returns every owned Deployment as it now is.
    deployments = (await list_owned(kube, owner, "Deployment") if problem
                   else outcome.deployments)
    if not deployments:
        return None
    states = {state.name: state for state in map(workload_state, deployments)}
    decisions = await autoscaler.tick(now, owner.namespace, spec, states)
    if any(decision.is_change for decision in decisions):
        states = {state.name: state for state in
                  map(workload_state, await list_owned(kube, owner, "Deployment"))}
    status = build_status(spec, observed, states.values(), previous, problem)
    status["conditions"].append(replicas_stalled_condition(
        decisions, previous.get("conditions"), observed))
    status["autoscaling"] = {"enabled": spec.autoscaling.is_enabled,
                             "pools": [decision.as_status() for decision in decisions]}
    observation = Observation(status, decisions)
    if observation.changes:
        status["lastScalingDecision"] = observation.changes[-1].as_status()
    await write_status(kube, owner, status)
    return observation
