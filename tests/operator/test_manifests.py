"""What the operator renders: worker and router pods, GPUs, RDMA, placement, replicas; all schema-valid."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tandem_operator.manifests.objects import Owner, desired_objects, pool_replicas
from tandem_operator.parsing import parse_spec
from tests.helm.schemas import validate_manifest
from tests.operator.specs import ESTIMATOR, policy_for

OWNER = Owner("llama", "serving", "uid-1")
SPEC = {
    "model": {"pvc": {"claimName": "models", "path": "llama-3-8b"}, "name": "llama-3-8b"},
    "prefill": {"replicas": 2, "gpus": 2, "nodeSelector": {"nvidia.com/gpu.product": "H100"},
                "tolerations": [{"key": "prefill-only", "operator": "Exists",
                                 "effect": "NoSchedule"}],
                "ucx": {"rdma": True, "netDevices": "mlx5_0:1", "env": {"UCX_RNDV_THRESH": "8192"}}},
    "decode": {"replicas": 3, "nodeSelector": {"nvidia.com/gpu.product": "A100"},
               "resources": {"limits": {"memory": "200Gi"}, "requests": {"cpu": 8}}},
    "router": {"replicas": 2, "apiKeysSecret": "tenants", "tlsSecret": "router-tls",
               "policy": policy_for("llama-3-8b"), "estimator": ESTIMATOR},
}


def _objects(raw: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    spec = parse_spec(raw, OWNER.name, "registry.example/tandem:1")
    return {(o["kind"], o["metadata"]["name"]): o for o in desired_objects(OWNER, spec, {})}


def _container(objects, name: str) -> dict[str, Any]:
    return objects["Deployment", name]["spec"]["template"]["spec"]["containers"][0]


def _pod(objects, name: str) -> dict[str, Any]:
    return objects["Deployment", name]["spec"]["template"]["spec"]


def test_every_object_is_valid_against_the_kubernetes_schemas():
    anonymous = {"allowAnonymous": True}
    for variant in (SPEC, {"model": {"image": {"path": "/opt/model"}}, "router": anonymous},
                    {"model": {"hostPath": {"path": "/mnt/models/llama"}}, "router": anonymous,
                     "prefill": {"device": "cpu"}, "decode": {"device": "cpu"}}):
        for manifest in _objects(variant).values():
            validate_manifest(manifest)


def test_workers_run_the_conventional_command_lines():
    objects = _objects(SPEC)
    prefill = _container(objects, "llama-default-prefill")
    decode = _container(objects, "llama-default-decode")
    common = ["--model", "/models/llama-3-8b", "--grpc-port", "50051", "--metrics-port", "9090",
              "--device", "cuda", "--dtype", "bfloat16", "--worker-id", "$(POD_NAME)",
              "--model-name", "llama-3-8b"]
    token = ["--worker-token-file", "/etc/tandem/worker-token/token"]
    assert prefill["command"] == ["tandem"] and prefill["args"] == ["prefill", *common, *token]
    assert decode["args"] == ["decode", *common, "--kv-port", "13337", "--kv-host", "$(POD_IP)",
                              *token]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in decode["env"]}
    assert env["POD_NAME"] == "metadata.name" and env["POD_IP"] == "status.podIP"
    mount = next(m for m in decode["volumeMounts"] if m["name"] == "model")
    assert mount == {"name": "model", "mountPath": "/models", "readOnly": True}
    volume = next(v for v in _pod(objects, "llama-default-decode")["volumes"] if v["name"] == "model")
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_rdma_pool_gets_devices_ipc_lock_and_ucx_env_and_the_other_does_not():
    objects = _objects(SPEC)
    prefill = _container(objects, "llama-default-prefill")
    decode = _container(objects, "llama-default-decode")
    assert prefill["resources"]["limits"] == {"nvidia.com/gpu": "2", "rdma/rdma_shared_device_a": "1"}
    assert prefill["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    env = {e["name"]: e.get("value") for e in prefill["env"]}
    assert env["UCX_TLS"] == "rc,sm,self,cuda_copy,cuda_ipc"
    assert env["UCX_NET_DEVICES"] == "mlx5_0:1" and env["UCX_RNDV_THRESH"] == "8192"

    assert decode["resources"] == {"limits": {"memory": "200Gi", "nvidia.com/gpu": "1"},
                                   "requests": {"cpu": "8"}}
    assert "add" not in decode["securityContext"]["capabilities"]
    assert not any(e["name"].startswith("UCX_") for e in decode["env"])


def test_prefill_and_decode_can_land_on_different_gpu_types():
    objects = _objects(SPEC)
    prefill, decode = _pod(objects, "llama-default-prefill"), _pod(objects, "llama-default-decode")
    assert prefill["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert decode["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}
    assert prefill["tolerations"][0]["key"] == "prefill-only" and "tolerations" not in decode


def test_every_pod_runs_as_non_root_on_a_read_only_root():
    for (kind, name), obj in _objects(SPEC).items():
        if kind != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
        security = pod["containers"][0]["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]


def test_router_mounts_policy_keys_and_tls_and_discovers_through_endpointslices():
    objects = _objects(SPEC)
    router = _container(objects, "llama-router")
    args = router["args"]
    assert args[:3] == ["router", "--model", "/models/llama-3-8b"]
    for flag, value in (("--discovery", "kubernetes"), ("--namespace", "serving"),
                        ("--deployment", "llama"), ("--policy", "/etc/tandem/policy/policy.yaml"),
                        ("--api-keys", "/etc/tandem/api-keys/api-keys.yaml"),
                        ("--tls-cert", "/etc/tandem/tls/tls.crt"),
                        ("--tls-key", "/etc/tandem/tls/tls.key")):
        assert args[args.index(flag) + 1] == value
    assert "tcpSocket" in router["readinessProbe"]  # the kubelet's gRPC probe cannot speak TLS
    assert objects["Role", "llama-router"]["rules"] == [{
        "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"]}]
    assert _pod(objects, "llama-router")["serviceAccountName"] == "llama-router"
    assert objects["ConfigMap", "llama-router-policy"]["data"]["policy.yaml"] == yaml.safe_dump(
        SPEC["router"]["policy"], sort_keys=True)


@pytest.mark.parametrize(("pool", "live", "expected"), [
    ({"replicas": 3, "scaling": "fixed"}, 7, 3),       # autoscaling off: the spec's count
    ({"minReplicas": 2, "maxReplicas": 6}, None, 2),   # new autoscaled pool starts at min
    ({"minReplicas": 2, "maxReplicas": 6}, 5, 5),      # the autoscaler's choice is kept
    ({"minReplicas": 2, "maxReplicas": 4}, 5, 4),      # ... within the new bounds
    ({"replicas": 2, "scaling": "external"}, 7, None),  # an HPA's: never asked for
    ({"replicas": 2, "scaling": "external"}, None, None),  # (the start size is set at creation)
])
def test_pool_replicas(pool, live, expected):
    raw = {"model": {"image": {"path": "/m"}}, "decode": pool, "autoscaling": {"enabled": True},
           "router": {"allowAnonymous": True}}
    spec = parse_spec(raw, "llama", "img")
    assert pool_replicas(spec, spec.tiers[0].decode, live) == expected
