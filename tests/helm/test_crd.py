"""The TandemDeployment CRD: generated from code, structural, valid; examples pass and bad specs fail."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import pytest
import yaml

from tandem_operator import crd
from tandem_operator.manifests.objects import Owner, desired_objects
from tandem_operator.parsing import parse_spec
from tandem_operator.spec import NAME_RULE, MetricsSpec, PoolSpec, RouterSpec, UcxSpec
from tandem_operator.spec.folder import PvcFolder
from tandem_operator.spec.rules import rules_of
from tests.helm.crd_schema import api_server_errors, cel_rules, structural_problems, validator
from tests.helm.schemas import validate_manifest

REPO = pathlib.Path(__file__).resolve().parents[2]
CRDS = REPO / "helm" / "tandem" / "crds"
EXAMPLES = sorted((REPO / "examples").glob("tandemdeployment-*.yaml"))


@pytest.fixture(scope="module")
def td_crd() -> dict[str, Any]:
    return yaml.safe_load((CRDS / "tandemdeployments.tandem.dev.yaml").read_text())


def test_the_committed_crd_is_the_generated_one(capsys):
    assert crd.main(["--check"]) == 0, capsys.readouterr().err


def test_the_crds_are_valid_and_structural(td_crd):
    for path in CRDS.glob("*.yaml"):
        document = yaml.safe_load(path.read_text())
        validate_manifest(document)
        schema = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert structural_problems(schema) == [], path.name


def test_the_structural_check_notices_a_non_structural_schema():
    schema = {"type": "object", "properties": {"a": {"description": "no type"}},
              "oneOf": [{"required": ["b"]}, {"type": "object"}]}
    problems = structural_problems(schema)
    assert ".a: no type" in problems
    assert any("names undeclared b" in p for p in problems)
    assert any("sets type" in p for p in problems)


def test_printer_columns_and_status_subresource(td_crd):
    version = td_crd["spec"]["versions"][0]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Model"] == ".status.model"
    assert columns["Prefill"] == ".status.prefillReplicas"
    assert columns["Decode"] == ".status.decodeReplicas"
    assert columns["Age"] == ".metadata.creationTimestamp"
    assert version["subresources"] == {"status": {}}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"conditions", "lastScalingDecision", "autoscaling"} <= set(status)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_resources_that_the_operator_renders(td_crd, path):
    resource = yaml.safe_load(path.read_text())
    assert api_server_errors(td_crd, resource) == []
    spec = parse_spec(resource["spec"], resource["metadata"]["name"], "registry.example/tandem:1")
    for manifest in desired_objects(Owner(spec.name, "serving", "uid"), spec, {}):
        validate_manifest(manifest)


def _changed(change: dict[str, Any], example: int = 0) -> dict[str, Any]:
    resource = copy.deepcopy(yaml.safe_load(EXAMPLES[example].read_text()))
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = resource
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return resource


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()  # a change that removes the field
TIER = {"name": "a", "model": {"image": {"path": "/m"}}}
POLICY = {"version": 1, "bands": [{"range": [0.0, 1.0], "tier": "llama-3-8b-instruct",
                                   "thinking": False, "answer_budget": 64, "temperature": 0.0,
                                   "num_samples": 1, "selection": "first_finished"}]}
ESTIMATOR = {"pvc": {"claimName": "models", "path": "estimators/features"}}

# Specs that both the API server (through the CRD) and the operator's parser accept.
GOOD = [
    {},
    {"spec.decode": {"scaling": "external", "replicas": 2}},
    {"spec.prefill": {"scaling": "fixed", "device": "cpu"}},
    {"spec.autoscaling": {"enabled": True, "pendingTimeoutSeconds": 120}},
    {"spec.router.policy": POLICY, "spec.router.estimator": ESTIMATOR},
    {"spec.router.policy": POLICY, "spec.router.estimator": {"hostPath": {"path": "/srv/e"}}},
    {"spec.model": DELETE, "spec.tiers": [TIER, {**TIER, "name": "b", "decode": {"gpus": 2}}]},
    {"spec.decode": {"resources": {"limits": {"memory": "64Gi", "cpu": 8}}}},
    {"spec.decode": {"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}},
    {"spec.model.pvc.path": DELETE},
    {"spec.router": {"allowAnonymous": True}},
]

# Specs that both refuse: the schema's keywords, and the CEL rules the models declare.
BAD = [
    {"spec.tiers": [TIER]},                                   # model and tiers
    {"spec.model": DELETE},                                   # neither
    {"spec.model.image": {"path": "/m"}},                     # two sources
    {"spec.model.pvc": {"path": "m"}},                        # no claim
    {"spec.model.pvc.path": "/abs"},
    {"spec.model.pvc.path": "a/../../etc"},                   # CEL
    {"spec.model.hostPath": {"path": "relative"}},
    {"spec.model.dtype": "int4"},
    {"spec.model.served": "x"},                               # unknown field
    {"spec.decode.replicas": -1},
    {"spec.decode.replicas": "2"},
    {"spec.decode.minReplicas": 0},
    {"spec.decode": {"minReplicas": 3, "maxReplicas": 2}},  # CEL
    {"spec.decode": {"device": "cpu", "gpus": 1}},           # CEL
    {"spec.decode.scaling": "hpa"},
    {"spec.decode.autoscale": False},                         # the removed boolean
    {"spec.prefill.device": "tpu"},
    {"spec.prefill.ucx": {"rdmaResource": "not a resource name"}},
    {"spec.prefill.ucx": {"env": {"TLS": "tcp"}}},           # CEL
    {"spec.prefill.capacity": {"targetKvUsage": 1.5}},
    {"spec.prefill.capacity": {"maxSequences": 0}},
    {"spec.prefill.tolerations": [{"key": "gpu", "operator": "Maybe"}]},
    {"spec.prefill.resources": {"limits": {"cpu": 1.5}}},
    {"spec.prefill.replica": 2},
    {"spec.router.serviceType": "Ingress"},
    {"spec.router": {}},                                      # CEL: no keys, not anonymous
    {"spec.router": DELETE},
    {"spec.router.policy": POLICY},                           # CEL: no estimator
    {"spec.router.estimator": ESTIMATOR},                     # CEL: no policy
    {"spec.model": DELETE, "spec.tiers": [{**TIER, "model": {**TIER["model"], "name": "x"}}]},
    {"spec.router.estimator": {**ESTIMATOR, "image": {"path": "/e"}}},
    {"spec.autoscaling": {"metrics": {"source": "prometheus"}}},  # CEL
    {"spec.autoscaling": {"metrics": {"rateWindow": "1 minute"}}},
    {"spec.autoscaling": {"intervalSeconds": 0}},
    {"spec.autoscaling": {"ttftSloSeconds": 0}},
    {"spec.autoscaling": {"pendingTimeoutSeconds": 0}},
    {"spec.autoscaling": {"enabled": "yes"}},
    {"spec.model": DELETE, "spec.tiers": [TIER, TIER]},       # list-map key
    {"spec.model": DELETE, "spec.tiers": [{**TIER, "name": "Big_Tier"}]},
    {"spec.model": DELETE, "spec.tiers": []},
    {"metadata.name": "x" * 41},                              # CEL on the root
]

# What only the operator can check (the API server accepts these; the status says why not):
# the router's own policy loader, the tiers a policy names, and the shared autoscaling
# policy's defaults (minReplicas 20 against the default maxReplicas 16).
OPERATOR_ONLY = [
    {"spec.router.policy": {"version": 2}, "spec.router.estimator": ESTIMATOR},
    {"spec.router.policy": {**POLICY, "bands": [{**POLICY["bands"][0], "tier": "other"}]},
     "spec.router.estimator": ESTIMATOR},
    {"spec.decode.minReplicas": 20},
]


def _parser_accepts(resource: dict[str, Any]) -> bool:
    try:
        parse_spec(resource.get("spec"), resource["metadata"]["name"], "img:1")
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("change", GOOD, ids=str)
def test_the_crd_and_the_parser_both_accept(td_crd, change):
    resource = _changed(change)
    assert api_server_errors(td_crd, resource) == []
    assert _parser_accepts(resource)


@pytest.mark.parametrize("change", BAD, ids=str)
def test_the_crd_and_the_parser_both_refuse(td_crd, change):
    resource = _changed(change)
    assert api_server_errors(td_crd, resource), f"the CRD accepts {change}"
    assert not _parser_accepts(resource), f"the parser accepts {change}"


@pytest.mark.parametrize("change", OPERATOR_ONLY, ids=str)
def test_checks_only_the_operator_can_make(td_crd, change):
    resource = _changed(change)
    assert api_server_errors(td_crd, resource) == []
    assert not _parser_accepts(resource)


def test_rules_beyond_json_schema_are_declared_once_as_cel_and_checked_by_both(td_crd):
    rules = cel_rules(td_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    declared = [rule.cel for model in (PoolSpec, UcxSpec, MetricsSpec, RouterSpec, PvcFolder)
                for rule in rules_of(model)] + [NAME_RULE.cel]
    assert set(declared) <= set(rules)
    assert "self.minReplicas <= self.maxReplicas" in "\n".join(rules)
    for change in ({"spec.decode": {"minReplicas": 3, "maxReplicas": 2}},
                   {"spec.decode": {"ucx": {"env": {"TLS": "tcp"}}}}):
        resource = _changed(change)
        validator(td_crd).validate(resource)  # JSON Schema alone lets these through
        assert api_server_errors(td_crd, resource)  # the CEL rules do not
        assert not _parser_accepts(resource)


def test_the_schema_has_no_defaults_so_tiers_inherit_the_shared_pools(td_crd):
    # A default stored by the API server in a tier's pool would hide the shared pool's value.
    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {key for child in node.values() for key in keys(child)}
        return {key for child in node for key in keys(child)} if isinstance(node, list) else set()

    spec = td_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert not {"default", "$ref", "$defs", "title"} & keys(spec)
