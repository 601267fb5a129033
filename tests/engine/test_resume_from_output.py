"""A request resumed from tokens it made elsewhere (migration) goes on exactly as the original did;
a prefilled request that ends at its first token reports how it ended."""

from __future__ import annotations

import pytest
import torch

from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import LLMEngine
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.sequence import TokenSection

torch.set_num_threads(1)

PROMPT = list(range(40, 90))


@pytest.fixture(scope="module")
def engine(tiny_llama_dir):
    return LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=256, block_size=16))


def _run(engine: LLMEngine, request_id: str, params: SamplingParams, output_token_ids=()):
    """Token ids, sections and finish reason of one request run alone."""
    engine.add_request(request_id, PROMPT, params, output_token_ids=list(output_token_ids))
    token_ids, sections, reason = [], [], None
    while engine.has_unfinished_requests():
        for output in engine.step():
            token_ids += output.new_token_ids
            sections += output.new_sections
            reason = output.finish_reason if output.finished else reason
    return token_ids, sections, reason


def _thinking_params(tokenizer, **kwargs) -> SamplingParams:
    return SamplingParams(think_start_token_ids=tuple(tokenizer.think_start_token_ids),
                          think_end_token_ids=tuple(tokenizer.think_end_token_ids),
                          starts_in_thinking=True, **kwargs)


@pytest.mark.parametrize("num_done", [1, 17, 39])
def test_seeded_sampling_resumes_with_the_draws_it_had_left(engine, num_done):
    params = SamplingParams(temperature=0.9, seed=5, max_tokens=40, ignore_eos=True)
    whole, _, reason = _run(engine, "whole", params)
    assert len(whole) == 40 and reason == "length"

    rest, _, resumed_reason = _run(engine, "rest", params, whole[:num_done])

    assert rest == whole[num_done:]
    assert resumed_reason == reason


@pytest.mark.parametrize("num_done", [3, 12], ids=["inside-thinking", "in-answer"])
def test_thinking_budget_and_sections_carry_over(engine, num_done):
    params = _thinking_params(engine.tokenizer, temperature=0.0, max_tokens=30, ignore_eos=True,
                              max_thinking_tokens=6)
    whole, sections, _ = _run(engine, "whole", params)
    delimiter = engine.tokenizer.think_end_token_ids[0]
    assert whole.index(delimiter) == 6
    assert sections == [TokenSection.THINKING] * 7 + [TokenSection.ANSWER] * 23

    rest, rest_sections, _ = _run(engine, "rest", params, whole[:num_done])

    assert rest == whole[num_done:]
    assert rest_sections == sections[num_done:]


def test_output_tokens_that_leave_nothing_to_do_or_are_unknown_are_refused(engine):
    params = SamplingParams(temperature=0.0, max_tokens=4)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.add_request("full", PROMPT, params, output_token_ids=[5, 6, 7, 8])
    with pytest.raises(ValueError, match="output_token_ids"):
        engine.add_request("unknown", PROMPT, params, output_token_ids=[10**6])
    assert not engine.has_unfinished_requests()


@pytest.mark.parametrize("max_tokens, expected", [(1, "length"), (5, "stop")])
def test_a_prefilled_request_that_ends_at_its_first_token_reports_it(engine, max_tokens, expected):
    first_token = 77
    stop_ids = (first_token,) if expected == "stop" else ()
    engine.reserve("prefilled", PROMPT)
    engine.add_prefilled_request("prefilled", PROMPT, first_token,
                                 SamplingParams(temperature=0.0, max_tokens=max_tokens,
                                                stop_token_ids=stop_ids))
    # Nothing runs, but the finish is still to be reported: an engine loop must step once more.
    assert engine.has_unfinished_requests()
    (output,) = engine.step()
    assert output.finished and output.finish_reason == expected and output.new_token_ids == []
    assert not engine.has_unfinished_requests()
