"""Every object one TandemDeployment owns: Deployments, Services, policy ConfigMap, router RBAC, PDBs."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from tandem.policy.autoscaling import Phase
from tandem.serving.worker_auth import new_worker_token

from tandem_operator.autoscale.mode import ScalingMode, pool_scaling_mode
from tandem_operator.kube import GROUP, VERSION
from tandem_operator.manifests.pods import (
    GRPC_PORT,
    HTTP_PORT,
    KV_PORT,
    METRICS_PORT,
    POLICY_FILE,
    WORKER_TOKEN_KEY,
    router_pod_template,
    worker_pod_template,
)
from tandem_operator.naming import (
    Role,
    policy_config_name,
    pool_name,
    owned_labels,
    router_name,
    selector_labels,
    worker_token_name,
    workload_labels,
)
from tandem_operator.spec import DeploymentSpec, PoolSpec, TierSpec, pool_autoscaling_config


@dataclass(slots=True, frozen=True)
class Owner:
    """The TandemDeployment that owns the objects: their namespace and owner reference."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        """An owner reference that lets the garbage collector delete the object with its owner."""
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TandemDeployment", "name": self.name,
                "uid": self.uid, "controller": True, "blockOwnerDeletion": True}


def desired_objects(owner: Owner, spec: DeploymentSpec,
                    live_replicas: Mapping[str, int]) -> list[dict[str, Any]]:
    """All objects the deployment should have; `live_replicas` maps pool Deployments to replicas."""
    objects = _router_objects(owner, spec)
    for tier in spec.tiers:
        for phase in Phase:
            objects += _pool_objects(owner, spec, tier, Role.of_phase(phase), live_replicas)
    return objects


def worker_token_secret(owner: Owner) -> dict[str, Any]:
    """A Secret with a fresh token for router -> worker calls (created once, never patched)."""
    token = base64.b64encode(new_worker_token().encode()).decode()
    return _object(owner, "v1", "Secret", worker_token_name(owner.name), owned_labels(owner.name),
                   type="Opaque", data={WORKER_TOKEN_KEY: token})


def pool_replicas(spec: DeploymentSpec, pool: PoolSpec, live: int | None) -> int | None:
    """How many replicas the reconciler asks for, by the pool's scaling mode: the spec's when
    fixed; the autoscaler's current choice (the live count) kept within the pool's bounds when
    the operator scales; None (never written) when an external scaler does."""
    mode = pool_scaling_mode(spec.autoscaling, pool)
    if mode is ScalingMode.EXTERNAL:
        return None
    if mode is ScalingMode.FIXED:
        return pool.replicas if pool.replicas is not None else 1
    config = pool_autoscaling_config(spec.autoscaling, pool)
    start = live if live is not None else pool.replicas
    start = start if start is not None else config.min_replicas
    return min(max(start, config.min_replicas), config.max_replicas)


def pool_start_replicas(pool: PoolSpec) -> int:
    """The size an externally scaled pool's Deployment is created with (written once only)."""
    if pool.replicas is not None:
        return pool.replicas
    return pool.min_replicas if pool.min_replicas is not None else 1


def _pool_objects(owner: Owner, spec: DeploymentSpec, tier: TierSpec, role: Role,
                  live_replicas: Mapping[str, int]) -> list[dict[str, Any]]:
    name = pool_name(spec.name, tier.name, role)
    pool = tier.prefill if role is Role.PREFILL else tier.decode
    labels = workload_labels(spec.name, role, tier.name)
    selector = selector_labels(spec.name, role, tier.name)
    ports = [_service_port("grpc", GRPC_PORT), _service_port("metrics", METRICS_PORT)]
    if role is Role.DECODE:
        ports.append(_service_port("kv", KV_PORT))
    service = {"clusterIP": "None", "selector": selector, "ports": ports}
    return [
        _deployment(owner, name, labels, selector, pool_replicas(spec, pool, live_replicas.get(name)),
                    worker_pod_template(spec, tier, role)),
        _object(owner, "v1", "Service", name, labels, spec=service),
        _pdb(owner, name, labels, selector, pool.max_unavailable),
    ]


def _router_objects(owner: Owner, spec: DeploymentSpec) -> list[dict[str, Any]]:
    router = spec.router
    name = router_name(spec.name)
    labels = workload_labels(spec.name, Role.ROUTER)
    selector = selector_labels(spec.name, Role.ROUTER)
    service = {"type": router.service_type, "selector": selector,
               "ports": [_service_port("grpc", GRPC_PORT), _service_port("http", HTTP_PORT),
                         _service_port("metrics", METRICS_PORT)]}
    rbac = "rbac.authorization.k8s.io/v1"
    # The router watches the EndpointSlices of the worker Services to find ready workers.
    rules = [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
              "verbs": ["get", "list", "watch"]}]
    binding = {"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}]}
    template = router_pod_template(spec, owner.namespace)
    objects = []
    if router.policy:
        policy = yaml.safe_dump(router.policy, sort_keys=True)
        # The router reads its policy file at start: a content hash on the pod template rolls the
        # router out again whenever the policy changes.
        template["metadata"]["annotations"] = {
            "tandem.dev/policy-hash": hashlib.sha256(policy.encode()).hexdigest()[:16]}
        objects.append(_object(owner, "v1", "ConfigMap", policy_config_name(spec.name), labels,
                               data={POLICY_FILE: policy}))
    return objects + [
        _object(owner, "v1", "ServiceAccount", name, labels),
        _object(owner, rbac, "Role", name, labels, rules=rules),
        _object(owner, rbac, "RoleBinding", name, labels, **binding),
        _deployment(owner, name, labels, selector, router.replicas, template),
        _object(owner, "v1", "Service", name, labels, spec=service),
        _pdb(owner, name, labels, selector, router.max_unavailable),
    ]


def _deployment(owner: Owner, name: str, labels: dict[str, str], selector: dict[str, str],
                replicas: int | None, template: dict[str, Any]) -> dict[str, Any]:
    spec = {"selector": {"matchLabels": selector}, "template": template}
    if replicas is not None:  # None: someone else (an HPA) owns the field
        spec = {"replicas": replicas, **spec}
    return _object(owner, "apps/v1", "Deployment", name, labels, spec=spec)


def _pdb(owner: Owner, name: str, labels: dict[str, str], selector: dict[str, str],
         max_unavailable: int) -> dict[str, Any]:
    spec = {"maxUnavailable": max_unavailable, "selector": {"matchLabels": selector}}
    return _object(owner, "policy/v1", "PodDisruptionBudget", name, labels, spec=spec)


def _object(owner: Owner, api_version: str, kind: str, name: str, labels: dict[str, str],
            **body: Any) -> dict[str, Any]:
    metadata = {"name": name, "namespace": owner.namespace, "labels": dict(labels),
                "ownerReferences": [owner.reference()]}
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}


def _service_port(name: str, number: int) -> dict[str, Any]:
    return {"name": name, "port": number, "targetPort": name, "protocol": "TCP"}
