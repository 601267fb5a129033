"""Sampler: greedy, filters, seeds, forced tokens and logprobs on hand-made logits (no model)."""

from __future__ import annotations

import pytest
import torch

from tandem.engine.sampler import sample, skip_draws
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.sequence import Sequence

VOCAB = 50


def seq(**params) -> Sequence:
    return Sequence("r", [1, 2, 3], SamplingParams(**params))


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(0)) * 3


def test_greedy_takes_the_argmax(logits):
    result = sample(logits, [seq(temperature=0.0) for _ in range(4)])
    assert result.token_ids == logits.argmax(-1).tolist()
    assert result.logprobs == [None] * 4 and result.top_logprobs == [None] * 4


@pytest.mark.parametrize("params", [
    {"temperature": 1.0, "top_k": 1, "seed": 3},
    {"temperature": 2.0, "top_p": 1e-6, "seed": 4},
    {"temperature": 1e-4, "seed": 5},
])
def test_filters_that_leave_one_token_equal_greedy(logits, params):
    result = sample(logits, [seq(**params) for _ in range(4)])
    assert result.token_ids == logits.argmax(-1).tolist()


def test_same_seed_gives_the_same_tokens_alone_or_batched(logits):
    alone = sample(logits[2:3], [seq(seed=11)]).token_ids
    batched = sample(logits, [seq(seed=99), seq(temperature=0.0), seq(seed=11), seq(seed=5)])
    assert alone == [batched.token_ids[2]]
    # A sequence's generator advances: successive draws with one seed follow one stream.
    first, second = seq(seed=11), seq(seed=11)
    draws_a = [sample(logits[:1], [first]).token_ids[0] for _ in range(20)]
    draws_b = [sample(logits[:1], [second]).token_ids[0] for _ in range(20)]
    assert draws_a == draws_b
    assert len(set(draws_a)) > 1  # flat enough logits: the stream is not stuck on one token


def test_skipping_draws_lands_on_the_same_token_as_sampling_them(logits):
    sampled = seq(seed=5)
    tokens = [sample(logits[:1], [sampled]).token_ids[0] for _ in range(3)]
    skipped = seq(seed=5)
    skip_draws(skipped, 2, VOCAB)
    assert sample(logits[:1], [skipped]).token_ids == tokens[2:]
    greedy = seq(temperature=0.0)
    skip_draws(greedy, 2, VOCAB)  # greedy sequences draw nothing and skip nothing
    assert greedy._generator is None


def test_top_k_and_top_p_never_leave_their_sets():
    probs = torch.tensor([[0.6, 0.3, 0.05, 0.03, 0.02]])
    logits = probs.log()
    top_k = seq(top_k=2, seed=1)
    top_p = seq(top_p=0.8, seed=2)  # 0.6 < 0.8 <= 0.9: the two most likely tokens stay
    chosen_k = {sample(logits, [top_k]).token_ids[0] for _ in range(200)}
    chosen_p = {sample(logits, [top_p]).token_ids[0] for _ in range(200)}
    assert chosen_k == {0, 1}
    assert chosen_p == {0, 1}


def test_forced_tokens_replace_the_choice_and_carry_the_model_logprob(logits):
    forced = seq(temperature=0.0, logprobs=True)
    forced.forced_token_ids.extend([7, 8])
    result = sample(logits[:1], [forced])
    assert result.token_ids == [7]
    assert result.logprobs[0] == pytest.approx(torch.log_softmax(logits[0], -1)[7].item(), abs=1e-6)


def test_logprobs_are_log_softmax_of_the_raw_logits(logits):
    seqs = [seq(temperature=0.7, seed=1, logprobs=True, top_logprobs=3), seq(temperature=0.0),
            seq(temperature=0.0, logprobs=True), seq(temperature=0.0, top_logprobs=1)]
    result = sample(logits, seqs)
    reference = torch.log_softmax(logits, -1)
    for row in (0, 2, 3):
        assert result.logprobs[row] == pytest.approx(reference[row, result.token_ids[row]].item(), abs=1e-6)
    values, ids = reference[0].topk(3)
    assert [t for t, _ in result.top_logprobs[0]] == ids.tolist()
    assert [v for _, v in result.top_logprobs[0]] == pytest.approx(values.tolist(), abs=1e-6)
    assert result.logprobs[1] is None and result.top_logprobs[1] is None
    assert result.top_logprobs[2] == []
    assert result.top_logprobs[3][0][0] == result.token_ids[3]


@pytest.mark.parametrize("params, message", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"seed": -1}, "seed"),
    ({"stop": [""]}, "stop"),
    ({"stop_token_ids": [-3]}, "stop_token_ids"),
    ({"max_thinking_tokens": 4}, "think_end_token_ids"),
    ({"max_thinking_tokens": -1, "think_end_token_ids": [5]}, "max_thinking_tokens"),
])
def test_bad_sampling_params_name_the_problem(params, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**params)

