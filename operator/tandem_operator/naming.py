"""Names and labels of everything the operator creates for a TandemDeployment.

The labels are a contract: the router discovers workers by selecting EndpointSlices with
`tandem.dev/deployment=<name>,tandem.dev/role=decode` (slices inherit their Service's labels),
and the ServiceMonitor and the metrics queries select pods by the same labels.
"""

from __future__ import annotations

import enum

from tandem.policy.autoscaling import Phase

MANAGED_BY = "tandem-operator"
LABEL_DEPLOYMENT = "tandem.dev/deployment"
LABEL_ROLE = "tandem.dev/role"
LABEL_MODEL = "tandem.dev/model"
LAST_APPLIED = "tandem.dev/last-applied"


class Role(str, enum.Enum):
    """What a workload does; also its `app.kubernetes.io/component`."""

    ROUTER = "router"
    PREFILL = "prefill"
    DECODE = "decode"

    @classmethod
    def of_phase(cls, phase: Phase) -> Role:
        """The worker role that serves a phase."""
        return cls(phase.value)


def owned_labels(deployment: str) -> dict[str, str]:
    """Labels on every object of one TandemDeployment (the pruning selector)."""
    return {
        "app.kubernetes.io/name": "tandem",
        "app.kubernetes.io/instance": deployment,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "tandem",
        LABEL_DEPLOYMENT: deployment,
    }


def selector_labels(deployment: str, role: Role, tier: str | None = None) -> dict[str, str]:
    """The immutable selector of one workload's pods (role, deployment and, for workers, tier)."""
    labels = {LABEL_DEPLOYMENT: deployment, LABEL_ROLE: role.value}
    if tier is not None:
        labels[LABEL_MODEL] = tier
    return labels


def workload_labels(deployment: str, role: Role, tier: str | None = None) -> dict[str, str]:
    """All labels of one workload's objects and pods."""
    return {**owned_labels(deployment), "app.kubernetes.io/component": role.value,
            **selector_labels(deployment, role, tier)}


def pool_name(deployment: str, tier: str, role: Role) -> str:
    """The Deployment and headless Service name of one worker pool."""
    return f"{deployment}-{tier}-{role.value}"


def router_name(deployment: str) -> str:
    """The router's Deployment, Service, ServiceAccount and Role name."""
    return f"{deployment}-router"


def policy_config_name(deployment: str) -> str:
    """The ConfigMap holding the router's policy file."""
    return f"{deployment}-router-policy"


def worker_token_name(deployment: str) -> str:
    """The Secret holding the token that router -> worker calls carry."""
    return f"{deployment}-worker-token"
