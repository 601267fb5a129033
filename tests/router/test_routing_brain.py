"""The routing brain with tiers: auto names, pinned models, budgets a model supports, token input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from router.auth import Tenant
from router.errors import ErrorCode, RouterError
from router.request_plan import ModelEntry, plan_request
from router.routing_brain import RoutingBrain
from tandem.api.v1 import inference_pb2
from tandem.policy.difficulty_policy import parse_policy


def _band(low, high, tier, thinking, **extra):
    values = {"range": [low, high], "tier": tier, "thinking": thinking, "answer_budget": 8,
              "temperature": 0.0, "num_samples": 1, "selection": "first_finished"}
    if thinking:
        values["thinking_budget"] = 16
    return {**values, **extra}


POLICY = parse_policy({"version": 1, "bands": [
    _band(0.0, 0.5, "plain", False),
    _band(0.5, 1.0, "thinker", True, num_samples=3, selection="majority_of_first_m", majority_m=2)]})


class RecordingEstimator:
    """Scores every prompt `value` and keeps the texts it was given."""

    name = "recording"

    def __init__(self, value: float) -> None:
        self.value = value
        self.prompts: list[str] = []

    def score(self, prompts: list[str]) -> np.ndarray:
        self.prompts.extend(prompts)
        return np.full(len(prompts), self.value)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """'thinker' has a thinking mode; 'plain' (another model, another vocabulary seed) has none."""
    from tandem.engine.tiny_model import make_tiny_model
    from tandem.engine.tokenizer import Tokenizer

    thinker = make_tiny_model(tmp_path_factory.mktemp("thinker"), arch="qwen2", seed=1)
    plain = make_tiny_model(tmp_path_factory.mktemp("plain"), arch="llama", seed=2)
    (plain / "tandem.json").write_text(json.dumps({"think_start": None, "think_end": None}))
    entries = {name: ModelEntry(name, Tokenizer.from_model_dir(path), 512, vocabulary_id=name)
               for name, path in (("thinker", thinker), ("plain", plain))}
    assert entries["thinker"].supports_thinking and not entries["plain"].supports_thinking
    return entries


def _brain(score: float, **fields) -> RoutingBrain:
    return RoutingBrain(default_model="plain", estimator=RecordingEstimator(score), policy=POLICY,
                        **fields)


@pytest.mark.parametrize("name", ["", "auto", "assistant"])
async def test_auto_and_the_deployment_name_let_the_policy_choose(models, name):
    brain = _brain(0.9, auto_names=frozenset({"assistant"}))
    outcome = await brain.before_prefill(inference_pb2.GenerateRequest(model=name, prompt="Prove it."),
                                         Tenant("acme"), models)
    assert outcome.model == "thinker" and outcome.estimator == "recording"
    assert outcome.defaults.max_thinking_tokens == 16 and outcome.defaults.num_samples == 3
    assert "band 1" in outcome.reason


async def test_a_pinned_model_without_thinking_keeps_the_policys_budgets_but_not_its_thinking(models):
    request = inference_pb2.GenerateRequest(model="plain", prompt="Prove it.")
    outcome = await _brain(0.9).before_prefill(request, Tenant("acme"), models)
    assert outcome.model == "plain" and outcome.difficulty == pytest.approx(0.9)
    defaults = outcome.defaults
    assert defaults.thinking is False and defaults.max_thinking_tokens is None
    assert defaults.max_tokens == 8 and defaults.num_samples == 3
    assert "named by the request" in outcome.reason
    # The plan is valid: no "has no thinking mode" refusal for a budget the client never asked for.
    plan = plan_request(request, models["plain"], defaults, now=0.0)
    assert not plan.budget.HasField("max_thinking_tokens") and plan.budget.max_tokens == 8


async def test_an_unknown_model_is_not_found_before_anything_is_scored(models):
    brain = _brain(0.9)
    with pytest.raises(RouterError) as error:
        await brain.before_prefill(inference_pb2.GenerateRequest(model="gpt-9", prompt="Hi"),
                                   Tenant("acme"), models)
    assert error.value.code is ErrorCode.NOT_FOUND and "auto" in error.value.message
    assert brain.estimator.prompts == []


async def test_token_input_is_scored_on_its_text(models):
    tokenizer = models["plain"].tokenizer
    text = "What is the integral of x squared?"
    request = inference_pb2.GenerateRequest(
        model="plain", tokens=inference_pb2.TokenInput(token_ids=tokenizer.encode(text)))
    brain = _brain(0.2)
    await brain.before_prefill(request, Tenant("acme"), models)
    assert brain.estimator.prompts == [tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True)]
    assert "integral" in brain.estimator.prompts[0]


async def test_auto_token_input_needs_a_model_when_the_tiers_read_ids_differently(models):
    request = inference_pb2.GenerateRequest(tokens=inference_pb2.TokenInput(token_ids=[5, 6, 7]))
    with pytest.raises(RouterError) as error:
        await _brain(0.2).before_prefill(request, Tenant("acme"), models)
    assert error.value.code is ErrorCode.INVALID_ARGUMENT and error.value.param == "model"
    # With one vocabulary for every tier there is no doubt which text the ids stand for.
    brain = _brain(0.2)
    await brain.before_prefill(request, Tenant("acme"), {"plain": models["plain"]})
    assert brain.estimator.prompts and brain.estimator.prompts[0]


async def test_token_ids_outside_the_vocabulary_are_invalid(models):
    request = inference_pb2.GenerateRequest(
        model="plain", tokens=inference_pb2.TokenInput(token_ids=[10**6]))
    with pytest.raises(RouterError) as error:
        await _brain(0.2).before_prefill(request, Tenant("acme"), models)
    assert error.value.code is ErrorCode.INVALID_ARGUMENT and error.value.param == "tokens"
