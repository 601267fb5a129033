"""Pod templates of the router and of the prefill and decode workers (one image, `tandem <role>`)."""

from __future__ import annotations

import posixpath
from typing import Any

from tandem_operator.naming import (
    Role,
    policy_config_name,
    router_name,
    worker_token_name,
    workload_labels,
)
from tandem_operator.spec import (
    MODEL_MOUNT_DIR,
    DeploymentSpec,
    FolderSpec,
    ModelSource,
    PoolSpec,
    TierSpec,
)

GRPC_PORT = 50051
HTTP_PORT = 8000
METRICS_PORT = 9090
KV_PORT = 13337
RUN_AS_USER = 10001
WORKER_GRACE_S = 60  # the workers drain in-flight requests for up to 30 s on SIGTERM
POLICY_DIR = "/etc/tandem/policy"
ESTIMATOR_DIR = "/etc/tandem/estimator"
API_KEYS_DIR = "/etc/tandem/api-keys"
TLS_DIR = "/etc/tandem/tls"
WORKER_TOKEN_DIR = "/etc/tandem/worker-token"
POLICY_FILE = "policy.yaml"
API_KEYS_FILE = "api-keys.yaml"
WORKER_TOKEN_KEY = "token"


def worker_pod_template(spec: DeploymentSpec, tier: TierSpec, role: Role) -> dict[str, Any]:
    """The pod template of one tier's prefill or decode pool."""
    pool = tier.prefill if role is Role.PREFILL else tier.decode
    ports = [_port("grpc", GRPC_PORT), _port("metrics", METRICS_PORT)]
    if role is Role.DECODE:
        ports.append(_port("kv", KV_PORT))
    volumes, mounts = _scratch_volumes()
    model_dir = add_folder("model", tier.model, MODEL_MOUNT_DIR, volumes, mounts)
    _add_worker_token(spec, volumes, mounts)
    container = {
        "name": role.value,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["tandem"],
        "args": _worker_args(spec, tier, model_dir, pool, role),
        "env": _worker_env(pool),
        "ports": ports,
        "resources": _worker_resources(pool),
        "volumeMounts": mounts,
        "securityContext": _container_security(["IPC_LOCK"] if pool.ucx.is_rdma else []),
        **_grpc_probes(),
    }
    pod_spec = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": WORKER_GRACE_S,
        "securityContext": _pod_security(),
        "containers": [container],
        "volumes": volumes,
        **_placement(spec, pool.node_selector, pool.tolerations),
    }
    return {"metadata": {"labels": workload_labels(spec.name, role, tier.name)}, "spec": pod_spec}


def router_pod_template(spec: DeploymentSpec, namespace: str) -> dict[str, Any]:
    """The router's pod template: discovery through EndpointSlices, each tier's tokenizer and chat
    template from that tier's model volume, the policy and its estimator when the spec has them."""
    router = spec.router
    volumes, mounts = _scratch_volumes()
    _add_worker_token(spec, volumes, mounts)
    args = ["router", *_tier_args(spec, volumes, mounts), "--deployment-name", spec.name,
            "--grpc-port", str(GRPC_PORT), "--http-port", str(HTTP_PORT),
            "--metrics-port", str(METRICS_PORT), "--discovery", "kubernetes",
            "--namespace", namespace, "--deployment", spec.name, *_worker_token_args()]
    if router.policy:
        volumes.append({"name": "policy", "configMap": {"name": policy_config_name(spec.name)}})
        mounts.append({"name": "policy", "mountPath": POLICY_DIR, "readOnly": True})
        args += ["--policy", f"{POLICY_DIR}/{POLICY_FILE}"]
    if router.estimator is not None:
        args += ["--estimator", add_folder("estimator", router.estimator, ESTIMATOR_DIR, volumes,
                                           mounts)]
    if router.api_keys_secret:
        volumes.append({"name": "api-keys", "secret": {"secretName": router.api_keys_secret}})
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
        args += ["--api-keys", f"{API_KEYS_DIR}/{API_KEYS_FILE}"]
    if router.allow_anonymous:
        args.append("--allow-anonymous")
    if router.tls_secret:
        volumes.append({"name": "tls", "secret": {"secretName": router.tls_secret}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        args += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"]
    container = {
        "name": Role.ROUTER.value,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["tandem"],
        "args": args + router.extra_args,
        "env": [_field_env("POD_NAME", "metadata.name"), {"name": "HOME", "value": "/tmp"},
                *router.env],
        "ports": [_port("grpc", GRPC_PORT), _port("http", HTTP_PORT), _port("metrics", METRICS_PORT)],
        "resources": _copy_resources(router.resources),
        "volumeMounts": mounts,
        "securityContext": _container_security([]),
        # The kubelet's gRPC probe speaks plaintext only: probe the TCP port when TLS is on.
        **(_tcp_probes() if router.tls_secret else _grpc_probes()),
    }
    pod_spec = {
        "serviceAccountName": router_name(spec.name),
        "securityContext": _pod_security(),
        "containers": [container],
        "volumes": volumes,
        **_placement(spec, router.node_selector, router.tolerations),
    }
    return {"metadata": {"labels": workload_labels(spec.name, Role.ROUTER)}, "spec": pod_spec}


def served_name(spec: DeploymentSpec, tier: TierSpec, model_dir: str) -> str:
    """The model name a tier's workers announce and the router serves it under: the tier's name
    when the spec has several tiers (clients pin one by it), else the model's name or folder."""
    if spec.tier_list is not None:
        return tier.name
    return tier.model.served_name or posixpath.basename(model_dir.rstrip("/"))


def _tier_args(spec: DeploymentSpec, volumes: list[dict[str, Any]],
               mounts: list[dict[str, Any]]) -> list[str]:
    # One model: mounted where the workers mount it. Several: each tier's at its own folder.
    if spec.tier_list is None:
        tier = spec.tiers[0]
        model_dir = add_folder("model", tier.model, MODEL_MOUNT_DIR, volumes, mounts)
        return ["--model", model_dir, "--model-name", served_name(spec, tier, model_dir)]
    args = []
    for tier in spec.tiers:
        model_dir = add_folder(f"model-{tier.name}", tier.model,
                               posixpath.join(MODEL_MOUNT_DIR, tier.name), volumes, mounts)
        args += ["--tier", f"{served_name(spec, tier, model_dir)}={model_dir}"]
    return args


def _worker_args(spec: DeploymentSpec, tier: TierSpec, model_dir: str, pool: PoolSpec,
                 role: Role) -> list[str]:
    args = [role.value, "--model", model_dir, "--grpc-port", str(GRPC_PORT),
            "--metrics-port", str(METRICS_PORT), "--device", pool.device,
            "--dtype", tier.model.dtype, "--worker-id", "$(POD_NAME)",
            "--model-name", served_name(spec, tier, model_dir)]
    if role is Role.DECODE:
        args += ["--kv-port", str(KV_PORT), "--kv-host", "$(POD_IP)"]
    return args + _worker_token_args() + pool.extra_args


def _worker_env(pool: PoolSpec) -> list[dict[str, Any]]:
    env = [_field_env("POD_NAME", "metadata.name"), _field_env("POD_IP", "status.podIP"),
           {"name": "HOME", "value": "/tmp"}]
    env += [{"name": key, "value": value} for key, value in sorted(pool.ucx.env().items())]
    return env + pool.env


def _worker_resources(pool: PoolSpec) -> dict[str, Any]:
    resources = _copy_resources(pool.resources)
    limits = resources.setdefault("limits", {})
    if pool.num_gpus:
        limits["nvidia.com/gpu"] = str(pool.num_gpus)
    if pool.ucx.is_rdma:
        limits[pool.ucx.rdma_resource] = str(pool.ucx.num_rdma_devices)
    if not limits:
        del resources["limits"]
    return resources


def _copy_resources(resources: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {section: dict(amounts) for section, amounts in resources.items()}


def add_folder(volume_name: str, folder: FolderSpec, mount_dir: str, volumes: list[dict[str, Any]],
               mounts: list[dict[str, Any]]) -> str:
    """Mounts a model or estimator folder (PVC, hostPath or image) read-only at mount_dir;
    returns the folder's path in the container."""
    if folder.source is ModelSource.IMAGE:
        return folder.path
    if folder.source is ModelSource.PVC:
        volume = {"persistentVolumeClaim": {"claimName": folder.claim_name, "readOnly": True}}
        path = posixpath.join(mount_dir, folder.path) if folder.path else mount_dir
    else:
        volume = {"hostPath": {"path": folder.path, "type": "Directory"}}
        path = mount_dir
    volumes.append({"name": volume_name, **volume})
    mounts.append({"name": volume_name, "mountPath": mount_dir, "readOnly": True})
    return path


def _add_worker_token(spec: DeploymentSpec, volumes: list[dict[str, Any]],
                      mounts: list[dict[str, Any]]) -> None:
    # The operator creates this Secret; the router sends the token, the workers require it.
    volumes.append({"name": "worker-token", "secret": {
        "secretName": worker_token_name(spec.name), "defaultMode": 0o440}})
    mounts.append({"name": "worker-token", "mountPath": WORKER_TOKEN_DIR, "readOnly": True})


def _worker_token_args() -> list[str]:
    return ["--worker-token-file", f"{WORKER_TOKEN_DIR}/{WORKER_TOKEN_KEY}"]


def _scratch_volumes() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # The root filesystem is read-only: /tmp for caches, a memory-backed /dev/shm for CUDA IPC.
    volumes = [{"name": "tmp", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    return volumes, mounts


def _placement(spec: DeploymentSpec, node_selector: dict[str, str],
               tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    placement: dict[str, Any] = {}
    if node_selector:
        placement["nodeSelector"] = dict(node_selector)
    if tolerations:
        placement["tolerations"] = list(tolerations)
    if spec.image_pull_secrets:
        placement["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    return placement


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}}


def _container_security(added_capabilities: list[str]) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"drop": ["ALL"]}
    if added_capabilities:
        capabilities["add"] = added_capabilities  # IPC_LOCK: UCX pins RDMA memory
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": capabilities}


def _grpc_probes() -> dict[str, Any]:
    probe = {"grpc": {"port": GRPC_PORT}}
    return {
        # Loading a large model can take many minutes: the startup probe allows up to 30.
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**probe, "periodSeconds": 20, "failureThreshold": 3},
    }


def _tcp_probes() -> dict[str, Any]:
    probe = {"tcpSocket": {"port": GRPC_PORT}}
    return {"readinessProbe": {**probe, "periodSeconds": 5},
            "livenessProbe": {**probe, "periodSeconds": 20, "failureThreshold": 3}}


def _port(name: str, number: int) -> dict[str, Any]:
    return {"name": name, "containerPort": number, "protocol": "TCP"}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
