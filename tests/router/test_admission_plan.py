"""Admission charges a request what its plan may spend: the real prompt plus every sample's budget,
with the samples and budgets the routing policy chose, not a guess made before planning."""

from __future__ import annotations

import numpy as np
import pytest

from router.admission import AdmittedService
from router.auth import Tenant
from router.core import RouterCore
from router.errors import ErrorCode, RouterError
from router.request_plan import ModelEntry
from router.routing_brain import RoutingBrain
from tandem.api.v1 import inference_pb2
from tandem.policy.difficulty_policy import parse_policy
from tandem.policy.quota import QuotaPolicy, TenantQuota
from tandem.telemetry.metrics import Metrics

ANSWER_BUDGET, NUM_SAMPLES = 100, 3
POLICY = parse_policy({"version": 1, "bands": [
    {"range": [0.0, 1.0], "tier": "tiny", "thinking": False, "answer_budget": ANSWER_BUDGET,
     "temperature": 0.7, "num_samples": NUM_SAMPLES, "selection": "first_finished"}]})


class ConstantEstimator:
    name = "constant"

    def score(self, prompts: list[str]) -> np.ndarray:
        return np.full(len(prompts), 0.5)


class QuotaWatchingDispatcher:
    """Runs nothing; notes the plan and the tenant's bucket while the request is in flight."""

    def __init__(self, quotas: QuotaPolicy) -> None:
        self.quotas = quotas
        self.seen: list[tuple[object, float]] = []

    async def run(self, plan, on_first_token=None):
        self.seen.append((plan, self.quotas.available_tokens("acme", now=1000.0)))
        return
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tandem.engine.tiny_model import make_tiny_model
    from tandem.engine.tokenizer import Tokenizer

    path = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    return ModelEntry("tiny", Tokenizer.from_model_dir(path), max_context=1024)


def _service(model, quotas: QuotaPolicy) -> tuple[AdmittedService, QuotaWatchingDispatcher]:
    dispatcher = QuotaWatchingDispatcher(quotas)
    brain = RoutingBrain(default_model="tiny", estimator=ConstantEstimator(), policy=POLICY)
    core = RouterCore({"tiny": model}, dispatcher, brain)
    return AdmittedService(core, quotas, metrics=Metrics.create(), clock=lambda: 1000.0), dispatcher


async def test_the_charge_is_the_plans_prompt_and_every_samples_budget(model):
    quotas = QuotaPolicy()
    service, dispatcher = _service(model, quotas)
    tenant = Tenant("acme", quota=TenantQuota(tokens_per_minute=6000))
    async for _ in service.generate(inference_pb2.GenerateRequest(prompt="Name three rivers."), tenant):
        pass
    ((plan, available),) = dispatcher.seen
    assert plan.num_samples == NUM_SAMPLES
    charged = len(plan.prompt_token_ids) + NUM_SAMPLES * ANSWER_BUDGET
    assert available == pytest.approx(6000 - charged)


async def test_a_plan_the_bucket_cannot_cover_is_refused_before_any_worker_is_used(model):
    quotas = QuotaPolicy()
    service, dispatcher = _service(model, quotas)
    tenant = Tenant("acme", quota=TenantQuota(tokens_per_minute=6000))
    # Another request of the tenant holds most of the bucket.
    held = quotas.admit(tenant, 6000 - 200, now=1000.0)
    with pytest.raises(RouterError) as error:
        async for _ in service.generate(inference_pb2.GenerateRequest(prompt="Name three rivers."), tenant):
            pass
    assert error.value.code is ErrorCode.RESOURCE_EXHAUSTED and error.value.retry_after_s > 0
    assert dispatcher.seen == []
    quotas.release(held, 0, now=1000.0)
    assert quotas.available_tokens("acme", now=1000.0) == pytest.approx(6000)


@pytest.mark.parametrize("asked", ["auto", "assistant", ""])
async def test_a_refusal_for_a_model_left_to_the_router_is_counted_as_auto(model, asked):
    quotas = QuotaPolicy()
    dispatcher = QuotaWatchingDispatcher(quotas)
    brain = RoutingBrain(default_model="tiny", estimator=ConstantEstimator(), policy=POLICY,
                         auto_names=frozenset({"assistant"}))
    metrics = Metrics.create()
    service = AdmittedService(RouterCore({"tiny": model}, dispatcher, brain), quotas,
                              metrics=metrics, clock=lambda: 1000.0, is_auto_model=brain.is_auto)
    tenant = Tenant("acme", quota=TenantQuota(tokens_per_minute=6000))
    quotas.admit(tenant, 6000 - 200, now=1000.0)  # another request holds most of the bucket
    with pytest.raises(RouterError):
        async for _ in service.generate(
                inference_pb2.GenerateRequest(prompt="Name three rivers.", model=asked), tenant):
            pass
    refused = metrics.requests.labels(outcome="rejected_quota", model="auto")._value.get()
    assert refused == 1
    assert metrics.requests.labels(outcome="rejected_quota", model="unknown")._value.get() == 0
