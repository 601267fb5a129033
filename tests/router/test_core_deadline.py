"""A request's deadline counts from its arrival at the router, as inference.proto says: time spent
estimating its difficulty and planning it is already part of it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from router.auth import Tenant
from router.core import RouterCore
from router.request_plan import ModelEntry
from router.routing_brain import RoutingBrain
from tandem.api.v1 import inference_pb2
from tandem.policy.difficulty_policy import parse_policy

POLICY = parse_policy({"version": 1, "bands": [
    {"range": [0.0, 1.0], "tier": "tiny", "thinking": False, "answer_budget": 4,
     "temperature": 0.0, "num_samples": 1, "selection": "first_finished"}]})


class SlowEstimator:
    """Takes a while, as a real estimator does under load, and notes when it was done."""

    name = "slow"

    def __init__(self) -> None:
        self.done_at: float | None = None

    def score(self, prompts: list[str]) -> np.ndarray:
        time.sleep(0.3)
        self.done_at = time.time()
        return np.full(len(prompts), 0.5)


class RecordingDispatcher:
    """Keeps the plan it is given and runs nothing."""

    def __init__(self) -> None:
        self.plans = []

    async def run(self, plan, on_first_token=None):
        self.plans.append(plan)
        return
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tandem.engine.tiny_model import make_tiny_model
    from tandem.engine.tokenizer import Tokenizer

    path = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    return ModelEntry("tiny", Tokenizer.from_model_dir(path), max_context=256)


async def test_the_deadline_counts_from_arrival_not_from_planning(model):
    estimator, dispatcher = SlowEstimator(), RecordingDispatcher()
    core = RouterCore({"tiny": model}, dispatcher,
                      RoutingBrain(default_model="tiny", estimator=estimator, policy=POLICY))
    request = inference_pb2.GenerateRequest(prompt="hello", budget=inference_pb2.Budget(deadline_seconds=5.0))
    async for _ in core.generate(request, Tenant("acme")):
        pass
    (plan,) = dispatcher.plans
    # Arrival came before the estimator finished, so the deadline is less than that plus 5 s.
    assert plan.budget.deadline < estimator.done_at + 5.0
