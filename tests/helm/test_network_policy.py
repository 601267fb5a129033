"""The chart's NetworkPolicies, evaluated against the pods as the chart and the operator render them."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from tandem_operator.manifests.objects import Owner, desired_objects
from tandem_operator.parsing import parse_spec
from tests.helm.network_policy import PodRef, admits, pod_ref
from tests.helm.test_chart import NAMESPACE, VARIANTS, render

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "tandemdeployment-minimal.yaml"


def _operator_pod(objects: list[dict]) -> PodRef:
    (operator,) = [o for o in objects if o["kind"] == "Deployment"]
    return pod_ref(operator["spec"]["template"], operator["metadata"]["namespace"])


def _served_namespaces(objects: list[dict]) -> list[str]:
    (operator,) = [o for o in objects if o["kind"] == "Deployment"]
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    named = [arg.split("=", 1)[1] for arg in args if arg.startswith("--namespace=")]
    return named or [NAMESPACE]  # cluster-wide: the chart's policies cover its own namespace


def _deployment_pods(namespace: str) -> dict[str, PodRef]:
    """The router and worker pods the operator renders for the minimal example, by Deployment."""
    example = yaml.safe_load(EXAMPLE.read_text())
    name = example["metadata"]["name"]
    spec = parse_spec(example["spec"], name, "registry.example/tandem:test")
    return {obj["metadata"]["name"]: pod_ref(obj["spec"]["template"], namespace)
            for obj in desired_objects(Owner(name, namespace, "uid-1"), spec, {})
            if obj["kind"] == "Deployment"}


@pytest.mark.parametrize("variant", ["namespaces-netpol", "ha-clusterwide-netpol"])
def test_the_operator_may_scrape_every_pod_it_scrapes(variant):
    objects = render(VARIANTS[variant])
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    operator = _operator_pod(objects)
    outsider = PodRef(operator.labels, "elsewhere", {})  # the same labels in another namespace
    for namespace in _served_namespaces(objects):
        for name, pod in _deployment_pods(namespace).items():
            port = pod.named_ports["metrics"]
            assert any(p["metadata"]["namespace"] == namespace for p in policies), namespace
            assert admits(policies, operator, pod, port), f"{name} in {namespace}"
            assert not admits(policies, outsider, pod, port), f"{name} in {namespace}"


def test_the_workers_stay_closed_to_other_pods():
    objects = render(VARIANTS["namespaces-netpol"])
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    operator = _operator_pod(objects)
    for name, pod in _deployment_pods("batch").items():
        if name.endswith("-router"):
            continue
        # The operator reaches the metrics port only; a pod of the router's namespace that the
        # operator did not make reaches nothing.
        assert not admits(policies, operator, pod, pod.named_ports["grpc"]), name
        stranger = PodRef({"app": "other"}, "batch", {})
        assert not admits(policies, stranger, pod, pod.named_ports["grpc"]), name
        router = _deployment_pods("batch")[name.split("-")[0] + "-router"]
        assert admits(policies, router, pod, pod.named_ports["grpc"]), name
