"""The TandemDeployment CustomResourceDefinition, derived from the spec models and committed to
the helm chart.

The `spec` schema comes from `tandem_operator.spec` (pydantic models, post-processed into a
structural schema by `tandem_operator.spec.crd_schema`), CEL rules included, so the API server and
the operator's parser check the same rules. `python -m tandem_operator.crd --write` regenerates
the chart's CRD file and `--check` fails when the committed file has drifted.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

import yaml

from tandem_operator.kube import GROUP, VERSION
from tandem_operator.spec import NAME_RULE
from tandem_operator.spec.crd_schema import spec_schema

CRD_PATH = (pathlib.Path(__file__).resolve().parents[2] / "helm" / "tandem" / "crds"
            / "tandemdeployments.tandem.dev.yaml")
Schema = dict[str, Any]


def _obj(description: str, properties: dict[str, Schema], required: tuple[str, ...] = (),
         **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = list(required)
    return {**schema, **extra}


def _leaf(kind: str, description: str, **extra: Any) -> Schema:
    return {"type": kind, "description": description, **extra}


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
        "mode": _leaf("string", "Who sizes the pool.", enum=["operator", "external", "fixed"]),
        "fromReplicas": {"type": "integer"}, "toReplicas": {"type": "integer"},
        "reason": {"type": "string"}, "isChange": {"type": "boolean"},
        "time": {"type": "string", "format": "date-time"},
    })
    workload = _obj("One Deployment.", {
        "name": {"type": "string"}, "role": {"type": "string"}, "tier": {"type": "string"},
        "readyReplicas": {"type": "integer"}, "desiredReplicas": {"type": "integer"},
        "scaling": _leaf("string", "Who sizes a pool: operator, external (HPA/KEDA) or fixed.",
                         enum=["operator", "external", "fixed"]),
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
        "metadata": {"type": "object"}, "spec": spec_schema(), "status": _status(),
    }, required=("spec",), **{"x-kubernetes-validations": [NAME_RULE.schema()]})

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
