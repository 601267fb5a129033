"""Request handling in LLMEngine: bad input, abort, stats, thinking budgets and stop strings."""

from __future__ import annotations

import pytest
import torch

from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import LLMEngine
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.sequence import TokenSection

torch.set_num_threads(1)

CONFIG = dict(block_size=4, num_blocks=128, max_num_seqs=8, max_num_batched_tokens=16)
PROMPT = list(range(300, 330))


def greedy(num_new: int, **extra) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=num_new, ignore_eos=True, **extra)


@pytest.fixture(scope="module")
def engine_dir(tiny_qwen2_dir):
    return tiny_qwen2_dir


def collect(engine: LLMEngine) -> dict[str, list]:
    """Steps to the end; returns every output per request id."""
    outputs: dict[str, list] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            outputs.setdefault(output.request_id, []).append(output)
    return outputs


def test_bad_requests_fail_alone_with_clear_errors(engine_dir):
    reference = LLMEngine(engine_dir, EngineConfig(**CONFIG)).generate([PROMPT], greedy(20))[0].token_ids
    engine = LLMEngine(engine_dir, EngineConfig(**CONFIG, max_model_len=64))
    vocab_size = engine.model_config.vocab_size
    engine.add_request("good", PROMPT, greedy(20))
    tokens = [t for _ in range(2) for o in engine.step() for t in o.new_token_ids]
    before = engine.stats()
    bad_requests = [
        ("long", list(range(70)), greedy(1), "prompt has 70 tokens"),
        ("long-output", list(range(60)), greedy(10), r"plus max_tokens \(10\) is over max_model_len \(64\)"),
        ("unknown-token", [1, 2, vocab_size], greedy(1), f"token id {vocab_size} at position 2 is outside"),
        ("negative-token", [-1], greedy(1), "token id -1 at position 0 is outside"),
        ("empty", [], greedy(1), "prompt is empty"),
        ("good", [1, 2], greedy(1), "already in use"),
        ("not-params", [1, 2], {"temperature": 0}, "params must be SamplingParams"),
    ]
    for request_id, prompt, params, message in bad_requests:
        with pytest.raises(ValueError, match=message):
            engine.add_request(request_id, prompt, params)
    for bad_params, message in [({"max_tokens": 0}, "max_tokens"), ({"temperature": -1.0}, "temperature"),
                                ({"top_p": 0.0}, "top_p"), ({"top_p": 1.01}, "top_p")]:
        with pytest.raises(ValueError, match=message):
            SamplingParams(**bad_params)
    with pytest.raises(ValueError, match="1 prompts but 2 SamplingParams"):
        engine.generate([PROMPT], [greedy(1), greedy(1)])
    assert engine.stats() == before
    while engine.has_unfinished_requests():
        tokens += [t for o in engine.step() for t in o.new_token_ids]
    assert engine.stats().num_blocks_used == 0
    assert tokens == reference


def test_engine_config_beyond_the_model_context_is_refused(engine_dir):
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        LLMEngine(engine_dir, EngineConfig(**CONFIG, max_model_len=10**6))


def test_abort_frees_blocks_and_leaves_the_others_running(engine_dir):
    engine = LLMEngine(engine_dir, EngineConfig(**CONFIG))
    engine.add_request("stay", PROMPT, greedy(6))
    engine.add_request("go", list(range(400, 420)), greedy(50))
    for _ in range(4):
        engine.step()
    assert engine.stats().num_running == 2
    num_blocks = len(engine.block_ids("go"))
    assert num_blocks >= 5  # at least its 20 prompt tokens in blocks of 4
    assert engine.abort("go") == num_blocks
    assert engine.abort("go") == 0
    outputs = collect(engine)
    assert set(outputs) == {"stay"} and outputs["stay"][-1].finish_reason == "length"
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_blocks_used) == (0, 0, 0)


def test_thinking_budget_forces_exactly_the_delimiter(engine_dir):
    engine = LLMEngine(engine_dir, EngineConfig(**CONFIG))
    unforced = engine.generate([PROMPT], greedy(16))[0].token_ids
    delimiter = tuple(engine.tokenizer.think_end_token_ids)
    assert not set(delimiter) & set(unforced)
    budget = 5
    params = greedy(16, max_thinking_tokens=budget, think_end_token_ids=delimiter, starts_in_thinking=True)
    engine.add_request("think", PROMPT, params)
    outputs = collect(engine)["think"]
    tokens = [t for o in outputs for t in o.new_token_ids]
    sections = [s for o in outputs for s in o.new_sections]
    assert tokens[:budget] == unforced[:budget]
    assert tuple(tokens[budget : budget + len(delimiter)]) == delimiter
    num_thinking = budget + len(delimiter)
    assert sections == [TokenSection.THINKING] * num_thinking + [TokenSection.ANSWER] * (16 - num_thinking)


def test_a_model_that_closes_its_thinking_itself_is_not_forced(engine_dir):
    engine = LLMEngine(engine_dir, EngineConfig(**CONFIG))
    unforced = engine.generate([PROMPT], greedy(12))[0].token_ids
    # Pretend the token the model makes at position 3 (its first occurrence) ends thinking.
    close_at = next(i for i in range(3, 12) if unforced[i] not in unforced[:i])
    params = greedy(12, max_thinking_tokens=10, think_end_token_ids=(unforced[close_at],),
                    starts_in_thinking=True)
    outputs = engine.generate([PROMPT], params)
    assert outputs[0].token_ids == unforced


def test_stop_strings_cut_the_text_and_are_never_streamed(engine_dir):
    engine = LLMEngine(engine_dir, EngineConfig(**CONFIG))
    full = engine.generate([PROMPT], greedy(24))[0]
    text = full.text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"pick a visible stop string from {text!r}"
    engine.add_request("stop", PROMPT, greedy(24, stop=(stop, "never-appears")))
    outputs = collect(engine)["stop"]
    streamed = [o.new_text for o in outputs]
    assert "".join(streamed) == text[: text.find(stop)]
    assert outputs[-1].finished and outputs[-1].finish_reason == "stop"
    tokens = [t for o in outputs for t in o.new_token_ids]
    assert tokens == full.token_ids[: len(tokens)] and len(tokens) < 24


def test_eos_and_stop_token_ids_end_a_request(engine_dir):
    engine = LLMEngine(engine_dir, EngineConfig(**CONFIG))
    unforced = engine.generate([PROMPT], greedy(10))[0].token_ids
    stop_at = next(i for i in range(2, 10) if unforced[i] not in unforced[:i])
    stopped = engine.generate([PROMPT], greedy(10, stop_token_ids=(unforced[stop_at],)))[0]
    assert stopped.token_ids == unforced[: stop_at + 1] and stopped.finish_reason == "stop"
    as_eos = LLMEngine(engine_dir, EngineConfig(**CONFIG))
    as_eos.eos_token_ids = frozenset({unforced[stop_at]})
    eos_params = SamplingParams(temperature=0.0, max_tokens=10)
    assert as_eos.generate([PROMPT], eos_params)[0].token_ids == unforced[: stop_at + 1]
