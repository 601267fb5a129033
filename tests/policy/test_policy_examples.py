"""Every policy the examples ship loads with the real loader and routes only to tiers that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tandem.policy.difficulty_policy import load_policy, parse_policy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEPLOYMENTS = sorted(EXAMPLES.glob("tandemdeployment-*.yaml"))


def test_the_example_policy_file_loads():
    policy = load_policy(EXAMPLES / "policy.yaml")
    assert policy.tiers == {"small", "large"}


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=[p.name for p in DEPLOYMENTS])
def test_each_deployments_router_policy_loads_and_names_its_tiers(path):
    spec = yaml.safe_load(path.read_text())["spec"]
    document = spec.get("router", {}).get("policy")
    if document is None:
        pytest.skip(f"{path.name} carries no routing policy")
    policy = parse_policy(document)
    tiers = ({tier["name"] for tier in spec["tiers"]} if "tiers" in spec
             else {spec["model"].get("name") or Path(spec["model"]["pvc"]["path"]).name})
    assert policy.tiers <= tiers, f"{path.name}: bands route to {policy.tiers - tiers}"


def test_the_tiers_example_carries_a_policy():
    # A skip above must not hide the one example that shows routing between tiers.
    spec = yaml.safe_load((EXAMPLES / "tandemdeployment-tiers.yaml").read_text())["spec"]
    assert "policy" in spec["router"]
