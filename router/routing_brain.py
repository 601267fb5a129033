"""Per-request routing decisions: difficulty before prefill, budget refinement after it.

Before any GPU work the estimator scores the prompt's text and the policy maps the score (and the
tenant) to a model tier, budgets, temperature and samples. After prefill, the probe's difficulty
(read off the prompt's final hidden state) may move the decode-side budget.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from router.auth import Tenant
from router.errors import ErrorCode, RouterError
from router.request_plan import BudgetDefaults
from tandem.api.v1 import inference_pb2, worker_pb2

NO_ESTIMATE = -1.0
SELECTION_RULES = {"first_finished": inference_pb2.SELECTION_RULE_FIRST_FINISHED,
                   "majority_of_first_m": inference_pb2.SELECTION_RULE_MAJORITY_OF_FIRST_M}


@dataclass(slots=True)
class RoutingOutcome:
    """What the brain decided for one request before prefill."""

    model: str
    defaults: BudgetDefaults
    difficulty: float = NO_ESTIMATE
    estimator: str = ""
    force_colocated: bool = False
    decision: object = None  # the policy's own decision, kept for refinement after prefill


@dataclass(slots=True)
class RoutingBrain:
    """Holds the estimator and the policy; without them every request goes to the default model."""

    default_model: str
    estimator: object = None  # has .name and .score(list[str]) -> array in [0, 1]
    policy: object = None  # tandem.policy.difficulty_policy.DifficultyPolicy
    defaults: BudgetDefaults = field(default_factory=BudgetDefaults)

    async def before_prefill(self, request: inference_pb2.GenerateRequest, tenant: Tenant,
                             model_names: set[str]) -> RoutingOutcome:
        """Estimates difficulty (off the event loop) and applies the policy."""
        if self.estimator is None or self.policy is None:
            return RoutingOutcome(model=request.model or self.default_model, defaults=self.defaults)
        text = prompt_text(request)
        score = float((await asyncio.to_thread(self.estimator.score, [text]))[0])
        decision = self.policy.resolve(score, tenant.name)
        model = request.model or decision.tier
        if model not in model_names:
            raise RouterError(ErrorCode.NOT_FOUND, f"the routing policy chose tier {model!r}, which "
                                                   f"this deployment does not serve")
        defaults = BudgetDefaults(max_tokens=decision.answer_budget + (decision.thinking_budget or 0),
                                  max_thinking_tokens=decision.thinking_budget,
                                  thinking=decision.thinking, temperature=decision.temperature,
                                  num_samples=decision.num_samples,
                                  selection=SELECTION_RULES[decision.selection.value],
                                  selection_m=decision.majority_m)
        return RoutingOutcome(model, defaults, score, self.estimator.name, decision=decision)

    def after_prefill(self, outcome: RoutingOutcome, first, budget: worker_pb2.DecodeBudget):
        """A tighter decode budget when the probe finds the prompt easier than estimated, else None.

        The probe only tightens: the budget was already checked against the tenant's limits and
        the context, so it never grows after prefill.
        """
        if self.policy is None or outcome.decision is None or first.probe_difficulty < 0:
            return None
        refined = self.policy.refine_after_probe(outcome.decision, first.probe_difficulty)
        thinking = refined.thinking_budget if refined.thinking_budget is not None else 0
        if refined is outcome.decision or not budget.HasField("max_thinking_tokens") \
                or thinking >= budget.max_thinking_tokens:
            return None
        tighter = worker_pb2.DecodeBudget()
        tighter.CopyFrom(budget)
        tighter.max_thinking_tokens = max(1, thinking)
        return tighter


def prompt_text(request: inference_pb2.GenerateRequest) -> str:
    """The text an estimator reads: the prompt, or the chat's user messages."""
    kind = request.WhichOneof("input")
    if kind == "prompt":
        return request.prompt
    if kind == "chat":
        return "\n".join(m.content for m in request.chat.messages if m.role == "user")
    return ""
