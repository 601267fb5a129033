"""The TandemDeployment status built from live Deployments, as the API server returns them."""

from __future__ import annotations

from tandem_operator.manifests.objects import Owner, desired_objects
from tandem_operator.parsing import parse_spec
from tandem_operator.status import build_status, workload_state
from tests.operator.specs import ESTIMATOR, policy_for

SPEC = {"model": {"pvc": {"claimName": "models", "path": "llama"}, "name": "llama"},
        "router": {"apiKeysSecret": "tenants", "policy": policy_for("llama"), "estimator": ESTIMATOR}}


def _ready(deployment: dict) -> dict:
    # As the Deployment controller reports a rolled-out Deployment.
    replicas = deployment["spec"]["replicas"]
    return {**deployment, "status": {"replicas": replicas, "updatedReplicas": replicas,
                                     "readyReplicas": replicas}}


def _conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def test_ready_needs_every_pool_the_spec_asks_for():
    spec = parse_spec(SPEC, "llama", "image:test")
    deployments = [_ready(obj) for obj in desired_objects(Owner("llama", "serving", "uid-1"), spec, {})
                   if obj["kind"] == "Deployment"]
    states = [workload_state(deployment) for deployment in deployments]
    assert _conditions(build_status(spec, 1, states, None))["Ready"]["status"] == "True"

    without_decode = [s for s in states if s.name != "llama-default-decode"]
    conditions = _conditions(build_status(spec, 1, without_decode, None))
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Progressing"]["status"] == "True"
    assert "llama-default-decode missing" in conditions["Progressing"]["message"]


def test_each_pool_says_who_sizes_it():
    spec = parse_spec({**SPEC, "prefill": {"scaling": "external"}, "autoscaling": {"enabled": True}},
                      "llama", "image:test")
    deployments = [obj for obj in desired_objects(Owner("llama", "serving", "uid-1"), spec, {})
                   if obj["kind"] == "Deployment"]
    for deployment in deployments:  # as created: the external pool at its start size
        deployment["spec"].setdefault("replicas", 1)
    status = build_status(spec, 1, [workload_state(_ready(d)) for d in deployments], None)
    assert {w["name"]: w.get("scaling") for w in status["workloads"]} == {
        "llama-router": None, "llama-default-prefill": "external", "llama-default-decode": "operator"}
