"""Per-request routing decisions: tier and budgets before prefill, budget refinement after it.

Before any GPU work the estimator scores the prompt's text and the policy maps the score (and the
tenant) to a model tier, budgets, temperature and samples. A request whose `model` is empty,
"auto" or one of the router's auto names (the deployment's own name) gets the policy's tier; one
that names a served model keeps it, and the policy still sets its budgets, within what that model
supports (a model without a thinking mode gets no thinking budget). After prefill, the probe's
difficulty (read off the prompt's final hidden state) may tighten the decode-side budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from router.auth import Tenant
from router.errors import ErrorCode, RouterError
from router.request_plan import BudgetDefaults, ModelEntry
from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.policy.probe_steps import ProbeStep, probe_steps
from tandem.serving.params import tighter_budget

NO_ESTIMATE = -1.0
AUTO_MODEL = "auto"
SELECTION_RULES = {"first_finished": inference_pb2.SELECTION_RULE_FIRST_FINISHED,
                   "majority_of_first_m": inference_pb2.SELECTION_RULE_MAJORITY_OF_FIRST_M}


@dataclass(slots=True)
class RoutingOutcome:
    """What the brain decided for one request before prefill."""

    model: str
    defaults: BudgetDefaults
    difficulty: float = NO_ESTIMATE
    estimator: str = ""
    # Why this tier, for the client (RoutingInfo.reason).
    reason: str = ""
    force_colocated: bool = False
    # The thinking budget by the prefill probe's difficulty (tandem.policy.probe_steps).
    probe_steps: list[ProbeStep] = field(default_factory=list)


@dataclass(slots=True)
class RoutingBrain:
    """Holds the estimator and the policy; without them every request that names no model goes to
    the default model."""

    default_model: str
    estimator: object = None  # has .name and .score(list[str]) -> array in [0, 1]
    policy: object = None  # tandem.policy.difficulty_policy.DifficultyPolicy
    defaults: BudgetDefaults = field(default_factory=BudgetDefaults)
    # Model names that let the router choose (besides "" and "auto"): the deployment's own name.
    auto_names: frozenset[str] = frozenset()

    def is_auto(self, model: str) -> bool:
        """True when a request's model field leaves the tier to the router."""
        return model in ("", AUTO_MODEL) or model in self.auto_names

    async def before_prefill(self, request: inference_pb2.GenerateRequest, tenant: Tenant,
                             models: Mapping[str, ModelEntry]) -> RoutingOutcome:
        """Estimates difficulty (off the event loop) and applies the policy."""
        pinned = None if self.is_auto(request.model) else request.model
        if pinned is not None and pinned not in models:
            raise unknown_model(pinned, models)
        if self.estimator is None or self.policy is None:
            model = pinned or self.default_model
            return RoutingOutcome(model, self.defaults, reason=(
                "model named by the request" if pinned else "the router's default model (no policy)"))
        score = await asyncio.to_thread(self._score, request, models, pinned)
        decision = self.policy.resolve(score, tenant.name)
        model = pinned or decision.tier
        entry = models.get(model)
        if entry is None:
            raise RouterError(ErrorCode.UNAVAILABLE, f"the routing policy chose tier {model!r}, "
                              f"which has no worker now (serving {sorted(models)})")
        reason = decision.reason if pinned is None else (
            f"model {pinned} named by the request; budgets from the policy ({decision.reason})")
        defaults = policy_defaults(decision, entry.supports_thinking)
        steps = probe_steps(self.policy, decision) if defaults.max_thinking_tokens else []
        return RoutingOutcome(model, defaults, score, self.estimator.name, reason, probe_steps=steps)

    def _score(self, request: inference_pb2.GenerateRequest, models: Mapping[str, ModelEntry],
               pinned: str | None) -> float:
        text = prompt_text(request, lambda: _detokenizer(models, pinned))
        return float(self.estimator.score([text])[0])

    def after_prefill(self, outcome: RoutingOutcome, first, budget: worker_pb2.DecodeBudget):
        """A tighter decode budget when the probe finds the prompt easier than estimated, else None.

        The probe only tightens: the budget was already checked against the tenant's limits and
        the context, so it never grows after prefill. The steps are those a colocated request's
        decode worker applies itself, so router and worker agree on the budget.
        """
        if first.probe_difficulty < 0:
            return None
        return tighter_budget(budget, outcome.probe_steps, first.probe_difficulty)


def policy_defaults(decision, supports_thinking: bool) -> BudgetDefaults:
    """A policy decision as request defaults, within what the model supports: without a thinking
    mode the thinking budget is dropped and only the answer budget is left."""
    thinking = decision.thinking and supports_thinking
    thinking_budget = decision.thinking_budget if thinking else None
    return BudgetDefaults(max_tokens=decision.answer_budget + (thinking_budget or 0),
                          max_thinking_tokens=thinking_budget, thinking=thinking,
                          temperature=decision.temperature, num_samples=decision.num_samples,
                          selection=SELECTION_RULES[decision.selection.value],
                          selection_m=decision.majority_m)


def prompt_text(request: inference_pb2.GenerateRequest, detokenizer) -> str:
    """The text an estimator reads: the prompt, the chat's user messages, or the token ids' text.

    detokenizer() gives the tokenizer that token ids are read with (called for token input only).
    """
    kind = request.WhichOneof("input")
    if kind == "prompt":
        return request.prompt
    if kind == "chat":
        return "\n".join(m.content for m in request.chat.messages if m.role == "user")
    if kind == "tokens":
        try:
            return detokenizer().decode(list(request.tokens.token_ids), skip_special_tokens=True)
        except ValueError as exc:
            raise RouterError(ErrorCode.INVALID_ARGUMENT, f"tokens: {exc}", param="tokens") from None
    return ""


def unknown_model(name: str, models: Mapping[str, ModelEntry]) -> RouterError:
    """The error for a model this deployment does not serve."""
    return RouterError(ErrorCode.NOT_FOUND, f"unknown model {name!r}; this deployment serves "
                       f"{sorted(models)} (or {AUTO_MODEL!r} to let it choose)", param="model")


def _detokenizer(models: Mapping[str, ModelEntry], pinned: str | None):
    if pinned is not None:
        return models[pinned].tokenizer
    vocabularies = {entry.vocabulary_id: entry.tokenizer for entry in models.values()}
    if not vocabularies:
        raise RouterError(ErrorCode.UNAVAILABLE, "no model has a worker now")
    if len(vocabularies) > 1:
        raise RouterError(ErrorCode.INVALID_ARGUMENT, "token input needs a model: the tiers of this "
                          f"deployment ({sorted(models)}) have different vocabularies, so token ids "
                          "mean different text on each", param="model")
    return next(iter(vocabularies.values()))
