"""The router's per-request relay: majority votes on answers, and latency per sample.

Worker events (the first token, then DecodeChunks) go into the relay as dispatch would deliver
them; the tokens are real ids of a real tokenizer.
"""

from __future__ import annotations

import pytest

from router.core import _Relay
from router.dispatch import FirstToken
from router.request_plan import ModelEntry, RequestPlan
from router.routing_brain import RoutingOutcome
from router.request_plan import BudgetDefaults
from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.telemetry.metrics import default_metrics

THINKING = inference_pb2.TOKEN_SECTION_THINKING
ANSWER = inference_pb2.TOKEN_SECTION_ANSWER
STOP = inference_pb2.FINISH_REASON_STOP
LENGTH = inference_pb2.FINISH_REASON_LENGTH


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tandem.engine.tiny_model import make_tiny_model
    from tandem.engine.tokenizer import Tokenizer

    path = make_tiny_model(tmp_path_factory.mktemp("relay-model"))
    return ModelEntry("relay-model", Tokenizer.from_model_dir(path), max_context=512)


def _relay(model, num_samples: int, selection: int = 0, m: int = 0) -> _Relay:
    sampling = inference_pb2.SamplingParams(n=num_samples, selection=selection, selection_m=m)
    plan = RequestPlan(model.tokenizer.encode("Question?"), sampling,
                       worker_pb2.DecodeBudget(max_tokens=64), num_samples, None)
    return _Relay("relay-test", model, plan, RoutingOutcome(model.name, BudgetDefaults()), 0.0)


def _chunk(model, index: int, thinking: str, answer: str, finish: int) -> worker_pb2.DecodeChunk:
    encode = lambda text: model.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    thought, said = encode(thinking), encode(answer)
    return worker_pb2.DecodeChunk(sample_index=index, token_ids=thought + said,
                                  sections=[THINKING] * len(thought) + [ANSWER] * len(said),
                                  finish_reason=finish)


def _first(token_id: int) -> FirstToken:
    return FirstToken(token_id=token_id, logprob=None, probe_difficulty=-1.0,
                      num_cached_prompt_tokens=0, is_disaggregated=False)


def _winner_text(responses) -> str:
    return "".join(r.text for r in responses if r.section == ANSWER and not r.HasField("usage"))


def test_majority_votes_on_the_answer_after_thinking_and_only_with_samples_that_stopped(model):
    relay = _relay(model, 3, inference_pb2.SELECTION_RULE_MAJORITY_OF_FIRST_M, m=2)
    first = model.tokenizer.encode("Hmm", add_special_tokens=False)[0]
    relay.handle(_first(first))
    # Sample 0 was cut by the length limit: its answer is no vote, however early it finished.
    relay.handle(_chunk(model, 0, " let me see", " Lyon", LENGTH))
    assert not relay.selection.is_decided
    # Samples 1 and 2 thought differently and agree on the answer.
    relay.handle(_chunk(model, 1, "I recall the capital", " Paris", STOP))
    assert not relay.selection.is_decided
    relay.handle(_chunk(model, 2, "France is a country", " paris ", STOP))
    assert relay.selection.is_decided and relay.selection.winner() == 1
    assert _winner_text(relay.closing()).strip() == "Paris"


def test_majority_falls_back_to_the_first_finished_when_no_sample_stopped_on_its_own(model):
    relay = _relay(model, 2, inference_pb2.SELECTION_RULE_MAJORITY_OF_FIRST_M, m=2)
    relay.handle(_first(model.tokenizer.encode("A", add_special_tokens=False)[0]))
    relay.handle(_chunk(model, 1, "", " one", LENGTH))
    relay.handle(_chunk(model, 0, "", " two", LENGTH))
    assert relay.selection.winner() == 1
    assert "one" in _winner_text(relay.closing())


def test_inter_token_latency_is_measured_within_each_sample(model, monkeypatch):
    clock = iter([0.0, 1.0, 1.5, 3.0, 3.5])
    monkeypatch.setattr("router.core.time.monotonic", lambda: next(clock))
    histogram = default_metrics().itl_seconds.labels(worker="router", model=model.name)
    before_sum, before_count = _sum_and_count(histogram)
    relay = _relay(model, 2)
    token = model.tokenizer.encode("a", add_special_tokens=False)[0]
    relay.handle(_first(token))                                              # t=0: sample 0 starts
    relay.handle(worker_pb2.DecodeChunk(sample_index=1, token_ids=[token]))  # t=1: sample 1 starts
    relay.handle(worker_pb2.DecodeChunk(sample_index=0, token_ids=[token]))  # t=1.5: 1.5 after its last
    relay.handle(worker_pb2.DecodeChunk(sample_index=1, token_ids=[token, token]))  # t=3: 2 after, 2 tokens
    relay.handle(worker_pb2.DecodeChunk(sample_index=0, token_ids=[token]))  # t=3.5: 2 after
    total, count = _sum_and_count(histogram)
    # Per sample, one observation per chunk (its mean gap): 1.5 and 2.0 for sample 0, 2 s over
    # 2 tokens for sample 1; a sample's first token has no gap before it.
    assert count - before_count == 3
    assert total - before_sum == pytest.approx(1.5 + 2.0 / 2 + 2.0)


def _sum_and_count(histogram) -> tuple[float, float]:
    samples = {s.name: s.value for metric in histogram.collect() for s in metric.samples
               if not s.labels.get("le")}
    return samples.get("tandem_itl_seconds_sum", 0.0), samples.get("tandem_itl_seconds_count", 0.0)
