"""Turns a TandemDeployment into its owned objects: list what exists, apply what is wanted, prune the rest."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from tandem.policy.autoscaling import Phase

from tandem_operator.apply import ForeignObjectError, Outcome, apply_object
from tandem_operator.autoscale.mode import ScalingMode, pool_scaling_mode
from tandem_operator.kube import KubeClient, KubeError
from tandem_operator.manifests.objects import (
    Owner,
    desired_objects,
    pool_start_replicas,
    worker_token_secret,
)
from tandem_operator.naming import Role, owned_labels, pool_name, worker_token_name
from tandem_operator.spec import DeploymentSpec
from tandem_operator.status import Problem

# On a pod template: when the worker token was last replaced (a changed template restarts the pods).
TOKEN_REPLACED_AT = "tandem.dev/worker-token-replaced-at"
# Creation order: what the router's pods mount and run as comes before its Deployment.
OWNED_KINDS = ("ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
               "PodDisruptionBudget")


@dataclass(slots=True)
class ReconcileResult:
    """What one reconciliation changed, and the Deployments as they now are."""

    created: list[str] = field(default_factory=list)
    patched: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_change(self) -> bool:
        """Whether anything was created, patched or deleted."""
        return bool(self.created or self.patched or self.deleted)

    def summary(self) -> str:
        """One line for events and logs."""
        parts = [f"{len(names)} {verb}" for verb, names in
                 (("created", self.created), ("patched", self.patched), ("deleted", self.deleted))
                 if names]
        return ", ".join(parts) if parts else "nothing to change"


async def list_owned(kube: KubeClient, owner: Owner, kind: str) -> list[dict[str, Any]]:
    """The objects of a kind that this TandemDeployment owns (by label and owner uid)."""
    objects = await kube.list(kind, owner.namespace, owned_labels(owner.name))
    return [obj for obj in objects if _is_owned_by(obj, owner)]


async def missing_claims(kube: KubeClient, namespace: str, spec: DeploymentSpec) -> list[str]:
    """The PersistentVolumeClaims the spec names (models, estimator) that do not exist (yet)."""
    return [claim for claim in spec.claim_names()
            if await kube.get("PersistentVolumeClaim", namespace, claim) is None]


async def missing_secrets(kube: KubeClient, namespace: str, spec: DeploymentSpec) -> list[str]:
    """The Secrets the router mounts (API keys, TLS) that do not exist (yet)."""
    names = sorted({name for name in (spec.router.api_keys_secret, spec.router.tls_secret) if name})
    return [name for name in names if await kube.get("Secret", namespace, name) is None]


async def converge(kube: KubeClient, owner: Owner, spec: DeploymentSpec) -> ReconcileResult | Problem:
    """Reconciles, or says why not: a model claim or a router Secret that does not exist (yet),
    or a name that another controller's object holds. Run on every change and every tick, so
    that objects deleted by hand come back and a problem is reported until it is resolved."""
    missing = await missing_claims(kube, owner.namespace, spec)
    if missing:
        return Problem("WaitingForVolume", f"waiting for PersistentVolumeClaim {', '.join(missing)}",
                       is_degraded=False)
    # Without them the router pod would sit in ContainerCreating with only an event to say why.
    missing = await missing_secrets(kube, owner.namespace, spec)
    if missing:
        return Problem("WaitingForSecret", f"waiting for Secret {', '.join(missing)} "
                       f"(named in spec.router)", is_degraded=False)
    try:
        return await reconcile(kube, owner, spec)
    except ForeignObjectError as exc:
        return Problem("NameTaken", str(exc), is_degraded=True)


async def reconcile(kube: KubeClient, owner: Owner, spec: DeploymentSpec) -> ReconcileResult:
    """Applies every desired object and deletes owned objects that are no longer wanted."""
    result = ReconcileResult()
    is_new_token = await ensure_worker_token(kube, owner)
    if is_new_token:
        result.created.append(f"Secret/{worker_token_name(owner.name)}")
    live = {kind: {obj["metadata"]["name"]: obj for obj in await list_owned(kube, owner, kind)}
            for kind in OWNED_KINDS}
    replicas = {name: obj.get("spec", {}).get("replicas")
                for name, obj in live["Deployment"].items()}
    initial = created_only_fields(spec)
    wanted: set[tuple[str, str]] = set()
    for desired in desired_objects(owner, spec, replicas):
        kind, name = desired["kind"], desired["metadata"]["name"]
        wanted.add((kind, name))
        outcome, applied = await apply_object(kube, desired, live[kind].get(name),
                                              initial.get((kind, name)))
        if outcome is Outcome.CREATED:
            result.created.append(f"{kind}/{name}")
        elif outcome is Outcome.PATCHED:
            result.patched.append(f"{kind}/{name}")
        if kind == "Deployment":
            if is_new_token and name in live[kind]:
                # The Secret was deleted and made anew: running pods read the old token at start.
                applied = await _restart_pods(kube, applied)
                if outcome is Outcome.UNCHANGED:
                    result.patched.append(f"{kind}/{name}")
            result.deployments.append(applied)
    for kind in reversed(OWNED_KINDS):
        for name in sorted(set(live[kind]) - {n for k, n in wanted if k == kind}):
            await kube.delete(kind, owner.namespace, name)
            result.deleted.append(f"{kind}/{name}")
    return result


def created_only_fields(spec: DeploymentSpec) -> dict[tuple[str, str], dict[str, Any]]:
    """Fields set only when an object is created, by (kind, name): the start size of each pool
    that an external scaler (HPA, KEDA) resizes afterwards through the scale subresource."""
    fields = {}
    for tier in spec.tiers:
        for phase in Phase:
            pool = tier.prefill if phase is Phase.PREFILL else tier.decode
            if pool_scaling_mode(spec.autoscaling, pool) is ScalingMode.EXTERNAL:
                name = pool_name(spec.name, tier.name, Role.of_phase(phase))
                fields["Deployment", name] = {"spec": {"replicas": pool_start_replicas(pool)}}
    return fields


async def ensure_worker_token(kube: KubeClient, owner: Owner) -> bool:
    """Creates the worker token Secret unless it exists (True when created); the owner
    reference lets the garbage collector remove it with the deployment. Looking first keeps
    every tick from posting a create that the API server refuses with 409."""
    if await kube.get("Secret", owner.namespace, worker_token_name(owner.name)) is not None:
        return False
    try:
        await kube.create(worker_token_secret(owner))
    except KubeError as exc:
        if exc.is_conflict:  # the create handler and the tick's drift repair raced to it
            return False
        raise
    return True


async def _restart_pods(kube: KubeClient, deployment: dict[str, Any]) -> dict[str, Any]:
    # As `kubectl rollout restart`: an annotation outside the applied manifest, so kept later.
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    patch = {"spec": {"template": {"metadata": {"annotations": {TOKEN_REPLACED_AT: now}}}}}
    meta = deployment["metadata"]
    return await kube.patch("Deployment", meta["namespace"], meta["name"], patch)


def _is_owned_by(obj: dict[str, Any], owner: Owner) -> bool:
    references = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner.uid for ref in references)


async def write_status(kube: KubeClient, owner: Owner, status: dict[str, Any]) -> None:
    """Merges `status` into the TandemDeployment's status subresource."""
    await kube.patch("TandemDeployment", owner.namespace, owner.name, {"status": status},
                     subresource="status")
