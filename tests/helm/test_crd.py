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
from tests.helm.crd_schema import cel_rules, structural_problems, validator
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
    validator(td_crd).validate(resource)
    spec = parse_spec(resource["spec"], resource["metadata"]["name"], "registry.example/tandem:1")
    for manifest in desired_objects(Owner(spec.name, "serving", "uid"), spec, {}):
        validate_manifest(manifest)


def _bad(change: dict[str, Any]) -> dict[str, Any]:
    resource = yaml.safe_load(EXAMPLES[0].read_text())
    resource = copy.deepcopy(resource)
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = resource
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return resource


@pytest.mark.parametrize(("change", "keyword"), [
    ({"spec.tiers": [{"name": "a", "model": {"image": {"path": "/m"}}}]}, "oneOf"),
    ({"spec.model": None}, "type"),
    ({"spec.model.image": {"path": "/m"}}, "oneOf"),
    ({"spec.model.hostPath": {"path": "relative"}}, "oneOf"),
    ({"spec.model.dtype": "int4"}, "enum"),
    ({"spec.decode.replicas": -1}, "minimum"),
    ({"spec.decode.minReplicas": 0}, "minimum"),
    ({"spec.prefill.device": "tpu"}, "enum"),
    ({"spec.prefill.ucx": {"rdmaResource": "not a resource name"}}, "pattern"),
    ({"spec.prefill.capacity": {"targetKvUsage": 1.5}}, "maximum"),
    ({"spec.prefill.capacity": {"maxSequences": 0}}, "minimum"),
    ({"spec.prefill.tolerations": [{"key": "gpu", "operator": "Maybe"}]}, "enum"),
    ({"spec.prefill.replica": 2}, "additionalProperties"),
    ({"spec.router.serviceType": "Ingress"}, "enum"),
    ({"spec.autoscaling": {"metrics": {"source": "prometheus"}}}, "anyOf"),
    ({"spec.autoscaling": {"metrics": {"rateWindow": "1 minute"}}}, "pattern"),
    ({"spec.autoscaling": {"intervalSeconds": 0}}, "minimum"),
    ({"spec.autoscaling": {"ttftSloSeconds": 0}}, "minimum"),
])
def test_bad_resources_are_rejected_by_the_schema(td_crd, change, keyword):
    errors = list(validator(td_crd).iter_errors(_bad(change)))
    assert errors, f"accepted {change}"
    assert keyword in {error.validator for error in errors}


def test_tier_names_are_dns_labels(td_crd):
    bad = _bad({"spec.model": None})
    del bad["spec"]["model"]
    bad["spec"]["tiers"] = [{"name": "Big_Tier", "model": {"image": {"path": "/m"}}}]
    assert any(e.validator == "pattern" for e in validator(td_crd).iter_errors(bad))


def test_rules_beyond_json_schema_are_cel_rules_and_parser_checks(td_crd):
    # min <= max, GPUs need CUDA, UCX_* keys: CEL in the CRD, and the operator refuses them too.
    text = "\n".join(cel_rules(td_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
    for rule in ("self.minReplicas <= self.maxReplicas", "self.device == 'cuda'",
                 "k.startsWith('UCX_')", "self.metadata.name.size() <= 40"):
        assert rule in text
    for change in ({"spec.decode": {"minReplicas": 3, "maxReplicas": 2}},
                   {"spec.decode": {"device": "cpu", "gpus": 1}},
                   {"spec.decode": {"ucx": {"env": {"TLS": "tcp"}}}}):
        resource = _bad(change)
        validator(td_crd).validate(resource)  # JSON Schema alone lets these through
        with pytest.raises(ValueError):
            parse_spec(resource["spec"], "llama", "img")
