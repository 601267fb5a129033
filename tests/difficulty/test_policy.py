"""The difficulty routing policy: bands, tenants, refinement after the probe, bad policy files."""

from __future__ import annotations

import copy
import pathlib
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from router.auth import Tenant
from router.request_plan import ModelEntry
from router.routing_brain import RoutingBrain
from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.policy.difficulty_policy import SelectionRule, load_policy, parse_policy

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"


def band(low, high, tier="small", thinking=False, **extra):
    values = {"range": [low, high], "tier": tier, "thinking": thinking, "answer_budget": 256,
              "temperature": 0.0, "num_samples": 1, "selection": "first_finished"}
    if thinking:
        values["thinking_budget"] = 512
    return {**values, **extra}


BASE = {"version": 1, "probe_weight": 0.5,
        "bands": [band(0.0, 0.5), band(0.5, 0.8, "large", True),
                  band(0.8, 1.0, "large", True, thinking_budget=2048, num_samples=3,
                       selection="majority_of_first_m", majority_m=2)]}


def test_the_example_policy_loads_and_resolves():
    policy = load_policy(EXAMPLE)
    easy = policy.resolve(0.1)
    assert (easy.tier, easy.thinking, easy.thinking_budget) == ("small", False, None)
    hardest = policy.resolve(1.0)
    assert hardest.tier == "large" and hardest.num_samples == 4
    assert hardest.selection is SelectionRule.MAJORITY_OF_FIRST_M and hardest.majority_m == 3
    assert "band 3" in hardest.reason


def test_tenant_overrides_map_tiers_and_cap_budgets():
    policy = load_policy(EXAMPLE)
    free = policy.resolve(0.95, "free")
    assert free.tier == "small" and free.thinking_budget == 1024 and free.answer_budget == 512
    assert free.num_samples == 1 and free.selection is SelectionRule.FIRST_FINISHED
    batch = policy.resolve(0.2, "eval-batch")
    assert batch.tier == "large" and not batch.thinking
    other = policy.resolve(0.2, "someone-else")
    assert replace(other, tenant_name=None) == policy.resolve(0.2)


def test_refinement_keeps_the_decision_when_the_band_is_the_same():
    policy = parse_policy(BASE)
    decision = policy.resolve(0.6)
    assert policy.refine_after_probe(decision, 0.7) is decision


def test_refinement_moves_budgets_but_never_the_tier_or_thinking_mode():
    policy = parse_policy(BASE)
    decision = policy.resolve(0.7)
    harder = policy.refine_after_probe(decision, 1.0)  # blended difficulty 0.85
    assert harder is not decision
    assert (harder.tier, harder.thinking, harder.thinking_budget, harder.num_samples) == \
        ("large", True, 2048, 3)
    # A small-model request whose probe says "hard" stays on the small model without thinking.
    easy = policy.resolve(0.2)
    assert policy.refine_after_probe(easy, 1.0) is easy
    with pytest.raises(ValueError, match="probe_difficulty"):
        policy.refine_after_probe(decision, 1.5)


@pytest.mark.parametrize("change, message", [
    (lambda p: p.update(version=2), "version must be 1"),
    (lambda p: p.update(probe_weight=1.5), "probe_weight"),
    (lambda p: p.update(extra=1), "unknown keys"),
    (lambda p: p["bands"].pop(0), "uncovered"),
    (lambda p: p["bands"][0].update(range=[0.0, 0.6]), "overlap"),
    (lambda p: p["bands"][0].update(range=[0.0, 0.4]), "gap"),
    (lambda p: p["bands"][0].pop("tier"), "missing keys"),
    (lambda p: p["bands"][0].update(thinking_budget=64), "thinking is off"),
    (lambda p: p["bands"][1].pop("thinking_budget"), "thinking_budget"),
    (lambda p: p["bands"][2].update(majority_m=5), "majority_m"),
    (lambda p: p["bands"][2].pop("majority_m"), "needs majority_m"),
    (lambda p: p["bands"][0].update(selection="fastest"), "not one of"),
    (lambda p: p["bands"][0].update(temperature="hot"), "finite number"),
    (lambda p: p["bands"][0].update(answer_budget=0), "answer_budget"),
    (lambda p: p.update(tenants={"t": {"caps": {"max_num_samples": 0}}}), "caps"),
    (lambda p: p.update(tenants={"t": {"tier_map": {"large": 3}}}), "model name"),
])
def test_bad_policies_are_refused_with_a_clear_error(change, message):
    document = copy.deepcopy(BASE)
    change(document)
    with pytest.raises(ValueError, match=message):
        parse_policy(document)


def test_bad_policy_files_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nbands: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_policy(broken)
    with pytest.raises(ValueError, match="cannot read"):
        load_policy(tmp_path / "absent.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.yaml: policy: expected a mapping"):
        load_policy(empty)


class ConstantEstimator:
    name = "constant"

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, prompts: list[str]) -> np.ndarray:
        return np.full(len(prompts), self.value)


async def test_the_router_brain_uses_the_policy_as_it_expects():
    brain = RoutingBrain(default_model="small", estimator=ConstantEstimator(0.9),
                         policy=parse_policy(BASE))
    request = inference_pb2.GenerateRequest(prompt="Prove that sqrt(2) is irrational.")
    thinking_tokenizer = SimpleNamespace(think_end_token_ids=(7,))
    models = {name: ModelEntry(name, thinking_tokenizer, max_context=4096) for name in ("small", "large")}
    outcome = await brain.before_prefill(request, Tenant(name="acme"), models)
    assert outcome.model == "large" and outcome.difficulty == pytest.approx(0.9)
    defaults = outcome.defaults
    assert defaults.thinking and defaults.max_thinking_tokens == 2048
    assert defaults.max_tokens == 256 + 2048 and defaults.num_samples == 3
    assert defaults.selection == inference_pb2.SELECTION_RULE_MAJORITY_OF_FIRST_M
    assert defaults.selection_m == 2
    budget = worker_pb2.DecodeBudget(max_tokens=2304, max_thinking_tokens=2048)
    # The probe agrees (same band): no new budget. It finds the prompt easier: a tighter one.
    assert brain.after_prefill(outcome, SimpleNamespace(probe_difficulty=0.85), budget) is None
    tighter = brain.after_prefill(outcome, SimpleNamespace(probe_difficulty=0.5), budget)
    assert tighter.max_thinking_tokens == 512 and tighter.max_tokens == 2304
