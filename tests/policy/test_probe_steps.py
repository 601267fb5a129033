"""Probe steps: the policy's refinement after the probe, as a step function fixed before dispatch."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.policy.difficulty_policy import parse_policy
from tandem.policy.probe_steps import probe_steps, tighter_thinking_budget


def _band(low, high, tier, thinking_budget=None, **extra):
    values = {"range": [low, high], "tier": tier, "thinking": thinking_budget is not None,
              "answer_budget": 64, "temperature": 0.0, "num_samples": 1, "selection": "first_finished"}
    if thinking_budget is not None:
        values["thinking_budget"] = thinking_budget
    return {**values, **extra}


# Thinking bands of tier "big" with a gap between them (another tier's band in the middle).
POLICY = parse_policy({"version": 1, "probe_weight": 0.6, "bands": [
    _band(0.0, 0.3, "big", 100), _band(0.3, 0.5, "small"), _band(0.5, 0.8, "big", 400),
    _band(0.8, 1.0, "big", 1600)]})


@pytest.mark.parametrize("prompt_difficulty", [0.1, 0.55, 0.9])
def test_the_steps_give_the_policys_own_refinement_everywhere_but_on_edges(prompt_difficulty):
    decision = POLICY.resolve(prompt_difficulty)
    steps = probe_steps(POLICY, decision)
    assert steps[0].min_probe_difficulty == 0.0
    assert [s.min_probe_difficulty for s in steps] == sorted(s.min_probe_difficulty for s in steps)
    for probe in np.linspace(0.0013, 0.9987, 301):
        expected = POLICY.refine_after_probe(decision, probe).thinking_budget
        chosen = [s.thinking_budget for s in steps if s.min_probe_difficulty <= probe][-1]
        assert chosen == expected, probe


def test_the_steps_only_ever_tighten_the_budget():
    decision = POLICY.resolve(0.9)  # 1600 thinking tokens
    steps = probe_steps(POLICY, decision)
    assert tighter_thinking_budget(1600, steps, 0.95) is None
    assert tighter_thinking_budget(1600, steps, 0.5) == 400  # refined 0.66: band [0.5, 0.8)
    assert tighter_thinking_budget(1600, steps, 0.0) == 100  # refined 0.36: nearest is [0, 0.3)
    assert tighter_thinking_budget(300, steps, 0.5) is None  # a request's own smaller budget stays
    assert tighter_thinking_budget(None, steps, 0.0) is None  # no thinking budget, nothing to cap


def test_no_steps_without_thinking_or_without_probe_weight():
    assert probe_steps(POLICY, POLICY.resolve(0.4)) == []  # the "small" band does not think
    no_weight = parse_policy({"version": 1, "probe_weight": 0.0, "bands": [_band(0.0, 1.0, "big", 100)]})
    assert probe_steps(no_weight, no_weight.resolve(0.5)) == []
