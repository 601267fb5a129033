"""The TandemDeployment CustomResourceDefinition, built here and committed to the helm chart.

One pool schema serves `spec.prefill`, `spec.decode` and each tier's overrides, so the schema is
built in code; `python -m tandem_operator.crd --write` regenerates the chart's CRD file and
`--check` fails when the committed file has drifted. Cross-field rules that JSON Schema cannot say
are CEL `x-kubernetes-validations` (checked by the API server) and are checked again by
`tandem_operator.parsing`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

import yaml

from tandem_operator.kube import GROUP, VERSION
from tandem_operator.spec import DTYPES, MAX_NAME_LENGTH, MAX_TIER_LENGTH

CRD_PATH = (pathlib.Path(__file__).resolve().parents[2] / "helm" / "tandem" / "crds"
            / "tandemdeployments.tandem.dev.yaml")
DNS_LABEL = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
Schema = dict[str, Any]


def _obj(description: str, properties: dict[str, Schema], required: tuple[str, ...] = (),
         **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = list(required)
    return {**schema, **extra}


def _leaf(kind: str, description: str, **extra: Any) -> Schema:
    return {"type": kind, "description": description, **extra}


def _str_map(description: str) -> Schema:
    return {"type": "object", "description": description, "additionalProperties": {"type": "string"}}


def _str_list(description: str) -> Schema:
    return {"type": "array", "description": description, "items": {"type": "string"}}


def _positive(description: str, **extra: Any) -> Schema:
    return _leaf("number", description, minimum=0, exclusiveMinimum=True, **extra)


def _resources() -> Schema:
    quantity = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
    section = {"type": "object", "additionalProperties": quantity}
    return _obj("Extra requests and limits (GPUs: use gpus).", {"requests": section, "limits": section})


def _tolerations() -> Schema:
    toleration = _obj("A toleration.", {
        "key": {"type": "string"},
        "operator": {"type": "string", "enum": ["Exists", "Equal"]},
        "value": {"type": "string"},
        "effect": {"type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
        "tolerationSeconds": {"type": "integer"},
    })
    return {"type": "array", "description": "Tolerations of the pods.", "items": toleration}


def _model() -> Schema:
    absolute = {"type": "string", "pattern": "^/"}
    return _obj("Where the model folder comes from: exactly one of pvc, hostPath or image.", {
        "name": _leaf("string", "Name the model is served under (--model-name)."),
        "dtype": _leaf("string", "Weights dtype.", enum=list(DTYPES)),
        "pvc": _obj("A PersistentVolumeClaim holding the model.", {
            "claimName": _leaf("string", "The claim.", minLength=1),
            "path": _leaf("string", "Folder inside the claim (relative).", pattern="^[^/]"),
        }, required=("claimName",)),
        "hostPath": _obj("A folder on every node.", {"path": absolute}, required=("path",)),
        "image": _obj("A folder baked into the image.", {"path": absolute}, required=("path",)),
    }, oneOf=[{"required": ["pvc"]}, {"required": ["hostPath"]}, {"required": ["image"]}])


def _pool(phase: str) -> Schema:
    ucx = _obj("UCX transport settings for the KV transfer.", {
        "rdma": _leaf("boolean", "Request RDMA devices and the IPC_LOCK capability."),
        "rdmaResource": _leaf("string", "Extended resource of the RDMA device plugin.",
                              pattern="^[a-z0-9.-]+/[A-Za-z0-9_.-]+$"),
        "rdmaDevices": _leaf("integer", "RDMA devices per pod.", minimum=1),
        "transports": _leaf("string", "UCX_TLS (default with rdma: rc,sm,self,cuda_copy,cuda_ipc)."),
        "netDevices": _leaf("string", "UCX_NET_DEVICES, e.g. mlx5_0:1."),
        "env": {**_str_map("Extra UCX_* variables."), "x-kubernetes-validations": [
            {"rule": "self.all(k, k.startsWith('UCX_'))", "message": "keys must start with UCX_"}]},
    })
    capacity = _obj("One replica's capacity at the SLO (defaults: the shared policy's).", {
        "prefillTokensPerSecond": _positive("Prompt tokens per second one prefill replica computes."),
        "maxSequences": _positive("Largest decode batch that meets the inter-token SLO."),
        "targetKvUsage": _positive("Keep mean KV block usage under this.", maximum=1),
        "scaleDownHeadroom": _positive("Shrink only if the load fits this fraction.", maximum=1),
    })
    env_var = _obj("An environment variable.", {
        "name": {"type": "string"}, "value": {"type": "string"},
        "valueFrom": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    }, required=("name",))
    return _obj(f"The {phase} worker pool.", {
        "replicas": _leaf("integer", "Replicas when autoscaling is off (start size when on).",
                          minimum=0),
        "minReplicas": _leaf("integer", "Autoscaling lower bound.", minimum=1),
        "maxReplicas": _leaf("integer", "Autoscaling upper bound.", minimum=1),
        "autoscale": _leaf("boolean", "Let the autoscaler size this pool (default true)."),
        "device": _leaf("string", "Torch device.", enum=["cuda", "cpu"]),
        "gpus": _leaf("integer", "nvidia.com/gpu per pod (default 1 on cuda).", minimum=0),
        "resources": _resources(),
        "nodeSelector": _str_map("Node labels the pods need (e.g. a GPU type)."),
        "tolerations": _tolerations(),
        "env": {"type": "array", "description": "Extra environment.", "items": env_var},
        "extraArgs": _str_list(f"Extra flags of `tandem {phase}`."),
        "ucx": ucx,
        "capacity": capacity,
        "maxUnavailable": _leaf("integer", "PodDisruptionBudget maxUnavailable.", minimum=0),
    }, **{"x-kubernetes-validations": [
        {"rule": "!has(self.minReplicas) || !has(self.maxReplicas) || "
                 "self.minReplicas <= self.maxReplicas",
         "message": "minReplicas must be <= maxReplicas"},
        {"rule": "!has(self.gpus) || self.gpus == 0 || !has(self.device) || self.device == 'cuda'",
         "message": "gpus need device: cuda"},
    ]})


def _router() -> Schema:
    return _obj("The router.", {
        "replicas": _leaf("integer", "Router replicas.", minimum=1),
        "resources": _resources(),
        "nodeSelector": _str_map("Node labels the router pods need."),
        "tolerations": _tolerations(),
        "serviceType": _leaf("string", "Type of the router Service.",
                             enum=["ClusterIP", "NodePort", "LoadBalancer"]),
        "policy": {"type": "object", "description": "Routing and budget policy (policy.yaml).",
                   "x-kubernetes-preserve-unknown-fields": True},
        "apiKeysSecret": _leaf("string", "Secret with api-keys.yaml (API key -> tenant)."),
        "allowAnonymous": _leaf("boolean", "Serve requests without an API key (anonymous tenant)."),
        "tlsSecret": _leaf("string", "kubernetes.io/tls Secret for the router's listeners."),
        "extraArgs": _str_list("Extra flags of `tandem router`."),
        "maxUnavailable": _leaf("integer", "PodDisruptionBudget maxUnavailable.", minimum=0),
    })


def _autoscaling() -> Schema:
    metrics = _obj("Where pool metrics come from.", {
        "source": _leaf("string", "scrape: the pods' /metrics; prometheus: the HTTP API.",
                        enum=["scrape", "prometheus"]),
        "prometheusUrl": _leaf("string", "Prometheus base URL.", pattern="^https?://"),
        "rateWindow": _leaf("string", "PromQL rate window.", pattern="^[1-9][0-9]*[smh]$"),
    }, anyOf=[{"properties": {"source": {"enum": ["scrape"]}}}, {"required": ["prometheusUrl"]}])
    return _obj("Phase-load autoscaling of the pools (defaults: the shared policy's).", {
        "enabled": _leaf("boolean", "Scale the pools whose autoscale is not false."),
        "intervalSeconds": _leaf("number", "Tick interval.", minimum=1),
        "cooldownSeconds": _positive("At most one change per pool per this (default: interval)."),
        "ttftSloSeconds": _positive("Time-to-first-token SLO (prefill)."),
        "itlSloSeconds": _positive("Inter-token latency SLO (decode)."),
        "scaleUpStabilizationSeconds": _leaf("number", "Scale-up window.", minimum=0),
        "scaleDownStabilizationSeconds": _leaf("number", "Scale-down window.", minimum=0),
        "maxScaleUpStep": _leaf("integer", "Replicas added per change at most.", minimum=1),
        "maxScaleDownStep": _leaf("integer", "Replicas removed per change at most.", minimum=1),
        "metrics": metrics,
    })


def _spec() -> Schema:
    tier = _obj("A model tier with its own pools.", {
        "name": _leaf("string", "Tier name (tandem.dev/model label).", pattern=DNS_LABEL,
                      maxLength=MAX_TIER_LENGTH),
        "model": _model(), "prefill": _pool("prefill"), "decode": _pool("decode"),
    }, required=("name", "model"))
    return _obj("The desired state.", {
        "image": _leaf("string", "Image of every component (default: the operator's)."),
        "imagePullPolicy": _leaf("string", "Pull policy.", enum=["Always", "IfNotPresent", "Never"]),
        "imagePullSecrets": _str_list("Secrets to pull the image with."),
        "model": _model(),
        "tiers": {"type": "array", "description": "Several model tiers (instead of model).",
                  "items": tier, "minItems": 1, "x-kubernetes-list-type": "map",
                  "x-kubernetes-list-map-keys": ["name"]},
        "router": _router(), "prefill": _pool("prefill"), "decode": _pool("decode"),
        "autoscaling": _autoscaling(),
    }, oneOf=[{"required": ["model"]}, {"required": ["tiers"]}])


def _status() -> Schema:
    condition = _obj("A condition.", {
        "type": _leaf("string", "Ready, Progressing or Degraded."),
        "status": _leaf("string", "True or False.", enum=["True", "False", "Unknown"]),
        "reason": {"type": "string"}, "message": {"type": "string"},
        "observedGeneration": {"type": "integer"},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
    }, required=("type", "status"))
    decision = _obj("A scaling decision and why.", {
        "pool": {"type": "string"}, "tier": {"type": "string"}, "phase": {"type": "string"},
        "fromReplicas": {"type": "integer"}, "toReplicas": {"type": "integer"},
        "reason": {"type": "string"}, "isChange": {"type": "boolean"},
        "time": {"type": "string", "format": "date-time"},
    })
    workload = _obj("One Deployment.", {
        "name": {"type": "string"}, "role": {"type": "string"}, "tier": {"type": "string"},
        "readyReplicas": {"type": "integer"}, "desiredReplicas": {"type": "integer"},
    })
    return _obj("The observed state.", {
        "observedGeneration": {"type": "integer"},
        "model": _leaf("string", "Served models, one per tier."),
        "routerReplicas": _leaf("string", "Ready/desired router replicas."),
        "prefillReplicas": _leaf("string", "Ready/desired prefill replicas (all tiers)."),
        "decodeReplicas": _leaf("string", "Ready/desired decode replicas (all tiers)."),
        "workloads": {"type": "array", "items": workload},
        "conditions": {"type": "array", "items": condition, "x-kubernetes-list-type": "map",
                       "x-kubernetes-list-map-keys": ["type"]},
        "autoscaling": _obj("The autoscaler's latest decision per pool.", {
            "enabled": {"type": "boolean"},
            "pools": {"type": "array", "items": decision},
        }),
        "lastScalingDecision": decision,
    })


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition document."""
    schema = _obj("A disaggregated prefill/decode LLM deployment.", {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
        "metadata": {"type": "object"}, "spec": _spec(), "status": _status(),
    }, required=("spec",), **{"x-kubernetes-validations": [
        {"rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
         "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters"}]})

    def column(name: str, path: str, kind: str = "string", priority: int = 0) -> dict[str, Any]:
        entry = {"name": name, "type": kind, "jsonPath": path}
        return {**entry, "priority": priority} if priority else entry

    version = {
        "name": VERSION, "served": True, "storage": True,
        "schema": {"openAPIV3Schema": schema},
        "subresources": {"status": {}},
        "additionalPrinterColumns": [
            column("Model", ".status.model"),
            column("Prefill", ".status.prefillReplicas"),
            column("Decode", ".status.decodeReplicas"),
            column("Router", ".status.routerReplicas", priority=1),
            column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
            column("Autoscaling", ".spec.autoscaling.enabled", "boolean", priority=1),
            column("Age", ".metadata.creationTimestamp", "date"),
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"tandemdeployments.{GROUP}",
                     "labels": {"app.kubernetes.io/name": "tandem",
                                "app.kubernetes.io/part-of": "tandem"}},
        "spec": {"group": GROUP, "scope": "Namespaced",
                 "names": {"kind": "TandemDeployment", "listKind": "TandemDeploymentList",
                           "plural": "tandemdeployments", "singular": "tandemdeployment",
                           "shortNames": ["td"], "categories": ["tandem"]},
                 "versions": [version]},
    }


def render_crd() -> str:
    """The CRD as the YAML file the chart ships."""
    header = "# Generated by `python -m tandem_operator.crd --write`; do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    """Writes the chart's CRD file, or checks that it matches the code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {CRD_PATH}")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file has drifted")
    args = parser.parse_args(argv)
    text = render_crd()
    if args.write:
        CRD_PATH.parent.mkdir(parents=True, exist_ok=True)
        CRD_PATH.write_text(text)
    elif args.check:
        if not CRD_PATH.exists() or CRD_PATH.read_text() != text:
            print(f"{CRD_PATH} differs from tandem_operator.crd: run "
                  "`python -m tandem_operator.crd --write`", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
