"""Request validation and planning: every bad input is a clear error naming its field."""

from __future__ import annotations

import math

import pytest

from router.errors import ErrorCode, RouterError
from router.request_plan import BudgetDefaults, ModelEntry, plan_request
from router.tenant_limits import within_tenant_limits
from router.auth import TenantPolicy
from tandem.api.v1 import inference_pb2


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tandem.engine.tiny_model import make_tiny_model
    from tandem.engine.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("tiny")
    make_tiny_model(path)
    return ModelEntry("tiny", Tokenizer.from_model_dir(path), max_context=256,
                      price_per_1k_prompt_tokens=1.0, price_per_1k_completion_tokens=2.0)


def _request(**fields) -> inference_pb2.GenerateRequest:
    request = inference_pb2.GenerateRequest(prompt="hello there", **fields)
    return request


def _refusal(model, request, defaults=None) -> RouterError:
    with pytest.raises(RouterError) as error:
        plan_request(request, model, defaults or BudgetDefaults(), now=1000.0)
    return error.value


@pytest.mark.parametrize("sampling, param", [
    (inference_pb2.SamplingParams(temperature=-0.5), "temperature"),
    (inference_pb2.SamplingParams(temperature=math.nan), "temperature"),
    (inference_pb2.SamplingParams(top_p=0.0), "top_p"),
    (inference_pb2.SamplingParams(top_p=1.5), "top_p"),
    (inference_pb2.SamplingParams(top_logprobs=21), "top_logprobs"),
    (inference_pb2.SamplingParams(n=17), "n"),
    (inference_pb2.SamplingParams(n=3, selection=inference_pb2.SELECTION_RULE_MAJORITY_OF_FIRST_M,
                                  selection_m=4), "selection_m"),
    (inference_pb2.SamplingParams(stop=["ok", ""]), "stop"),
    (inference_pb2.SamplingParams(stop=["ok"] * 17), "stop"),
    (inference_pb2.SamplingParams(stop=["x" * 257]), "stop"),
])
def test_bad_sampling_values_are_refused_by_name(model, sampling, param):
    error = _refusal(model, _request(sampling=sampling))
    assert error.code is ErrorCode.INVALID_ARGUMENT and error.param == param


@pytest.mark.parametrize("budget, param", [
    (inference_pb2.Budget(max_tokens=0), "max_tokens"),
    (inference_pb2.Budget(max_tokens=10_000), "max_tokens"),
    (inference_pb2.Budget(deadline_seconds=-1), "deadline_seconds"),
    (inference_pb2.Budget(max_cost=0), "max_cost"),
])
def test_bad_budgets_are_refused_by_name(model, budget, param):
    error = _refusal(model, _request(budget=budget))
    assert error.code is ErrorCode.INVALID_ARGUMENT and error.param == param


def test_inputs_must_be_present_and_in_range(model):
    assert _refusal(model, inference_pb2.GenerateRequest()).param == "input"
    assert _refusal(model, inference_pb2.GenerateRequest(prompt="")).param == "prompt"
    too_big = inference_pb2.GenerateRequest(tokens=inference_pb2.TokenInput(token_ids=[5, 10**6]))
    assert "outside the vocabulary" in _refusal(model, too_big).message
    chat = inference_pb2.GenerateRequest(chat=inference_pb2.ChatInput(
        messages=[inference_pb2.ChatMessage(role="wizard", content="hi")]))
    assert _refusal(model, chat).param == "messages"


def test_prompt_over_the_context_names_both_lengths(model):
    request = inference_pb2.GenerateRequest(tokens=inference_pb2.TokenInput(token_ids=[5] * 300))
    error = _refusal(model, request)
    assert "300 tokens" in error.message and "256" in error.message


def test_defaults_fill_what_the_request_leaves_out(model):
    plan = plan_request(_request(), model, BudgetDefaults(max_tokens=7, temperature=0.3), now=1000.0)
    assert plan.budget.max_tokens == 7
    assert plan.sampling.temperature == pytest.approx(0.3)
    assert plan.num_samples == 1
    assert plan.deadline is None and plan.budget.deadline == 0.0


def test_deadline_and_cost_become_worker_limits(model):
    plan = plan_request(_request(budget=inference_pb2.Budget(deadline_seconds=2.5, max_cost=0.1)),
                        model, BudgetDefaults(), now=1000.0)
    assert plan.budget.deadline == pytest.approx(1002.5)
    num_prompt = len(plan.prompt_token_ids)
    assert plan.budget.max_total_tokens == math.floor((0.1 - num_prompt / 1000) / 0.002)


def test_cost_below_the_minimum_is_resource_exhausted(model):
    error = _refusal(model, _request(budget=inference_pb2.Budget(max_cost=1e-6)))
    assert error.code is ErrorCode.RESOURCE_EXHAUSTED


def test_thinking_opens_a_thinking_section(model):
    plan = plan_request(_request(budget=inference_pb2.Budget(thinking=True, max_thinking_tokens=5)),
                        model, BudgetDefaults(), now=1000.0)
    start = list(model.tokenizer.think_start_token_ids)
    assert plan.prompt_token_ids[-len(start):] == start
    assert plan.budget.starts_in_thinking and plan.budget.max_thinking_tokens == 5


def test_tenant_limits_refuse_wider_requests_and_clamp_defaults():
    policy = TenantPolicy(max_tokens=10, max_samples=2, max_deadline_seconds=5.0)
    with pytest.raises(RouterError, match="limit of 10"):
        within_tenant_limits(_request(budget=inference_pb2.Budget(max_tokens=11)),
                             BudgetDefaults(), policy, "t")
    with pytest.raises(RouterError, match="limit of 2"):
        within_tenant_limits(_request(sampling=inference_pb2.SamplingParams(n=3)),
                             BudgetDefaults(), policy, "t")
    request, defaults = within_tenant_limits(_request(), BudgetDefaults(max_tokens=256), policy, "t")
    assert defaults.max_tokens == 10
    assert request.budget.deadline_seconds == 5.0
