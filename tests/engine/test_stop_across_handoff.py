"""Stop strings that begin in the first generated token: a request prefilled on another engine, and a
fork, stop exactly where the engine alone stops, and never stream again what was streamed before."""

from __future__ import annotations

import pytest
import torch

from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import LLMEngine
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.text_stream import TextStream
from tests.engine.test_request_output import ScriptedDetokenizer

torch.set_num_threads(1)

CONFIG = dict(block_size=4, num_blocks=64, max_num_seqs=4, max_num_batched_tokens=16)
PROMPT = list(range(400, 422))
MAX_TOKENS = 8


def greedy(**extra) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, **extra)


def run(engine: LLMEngine, request_id: str) -> tuple[list[int], str, str | None]:
    """Steps to the end; returns request_id's new tokens, text and finish reason."""
    tokens, text, reason = [], "", None
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.request_id == request_id:
                tokens += output.new_token_ids
                text += output.new_text
                reason = output.finish_reason if output.finished else reason
    return tokens, text, reason


@pytest.fixture(scope="module")
def spanning_stop(tiny_llama_dir) -> tuple[str, list[int], str]:
    """A stop string made of the first token's last characters and the second token's first ones,
    with what the engine alone makes for it (tokens, text)."""
    engine = LLMEngine(tiny_llama_dir, EngineConfig(**CONFIG))
    engine.add_request("plain", PROMPT, greedy())
    pieces = [output.new_text for _ in range(3) for output in engine.step()]
    assert len(pieces[0]) >= 2 and len(pieces[1]) >= 3, f"pick another prompt: pieces {pieces}"
    stop = pieces[0][-2:] + pieces[1][:3]
    assert "".join(pieces).find(stop) == len(pieces[0]) - 2, f"stop {stop!r} appears earlier"
    alone = LLMEngine(tiny_llama_dir, EngineConfig(**CONFIG))
    alone.add_request("alone", PROMPT, greedy(stop=(stop,)))
    tokens, text, reason = run(alone, "alone")
    assert reason == "stop" and len(tokens) == 2 and text == pieces[0][:-2]
    return stop, tokens, text


def test_a_prefilled_request_stops_on_a_string_that_begins_in_its_first_token(tiny_llama_dir, spanning_stop):
    stop, expected_tokens, _ = spanning_stop
    params = greedy(stop=(stop,))
    prefill = LLMEngine(tiny_llama_dir, EngineConfig(**CONFIG))
    decode = LLMEngine(tiny_llama_dir, EngineConfig(**CONFIG))
    target_blocks, _ = decode.reserve("r", PROMPT)

    def ship(layer: int, spans) -> None:
        for _, source_blocks, start, end in spans:
            for index in range(start // 4, (end - 1) // 4 + 1):
                decode.kv_cache[layer, target_blocks[index]] = prefill.kv_cache[layer, source_blocks[index]]

    prefill.set_layer_hook(ship)
    prefill.add_request("r", PROMPT, params, prefill_only=True)
    first = [output for _ in range(3) for output in prefill.step()][0]
    prefill.release("r")
    decode.add_prefilled_request("r", PROMPT, first.new_token_ids[0], params)
    tokens, text, reason = run(decode, "r")
    assert first.new_token_ids + tokens == expected_tokens
    assert reason == "stop"
    assert text == ""  # the first token's text went out with the prefill; the stop cuts inside it


def test_a_fork_stops_on_a_string_that_begins_in_the_shared_tokens(tiny_llama_dir, spanning_stop):
    stop, expected_tokens, _ = spanning_stop
    engine = LLMEngine(tiny_llama_dir, EngineConfig(**CONFIG))
    engine.add_request("parent", PROMPT, greedy())
    first = next(output for _ in range(3) for output in engine.step())
    engine.fork("parent", "child", greedy(stop=(stop,)))
    tokens, text, reason = run(engine, "child")
    assert first.new_token_ids + tokens == expected_tokens
    assert reason == "stop" and text == ""


def test_text_streamed_elsewhere_completes_stop_strings_but_is_not_streamed_again():
    text_stream = TextStream(ScriptedDetokenizer(["one EN", "D", " two", " three"]), ("END two",))
    assert not text_stream.add(0)
    text_stream.mark_streamed()  # "one EN" went out with the first token, elsewhere
    assert not text_stream.add(1)
    assert text_stream.take(is_final=False) == ""  # "END" may begin the stop string: held back
    assert text_stream.add(2)
    assert text_stream.take(is_final=True) == ""

    resumed = TextStream(ScriptedDetokenizer(["one EN", "D", " two", " three"]), ("EN!",))
    resumed.add(0)
    resumed.mark_streamed(num_unstreamed=2)  # "EN" was held back, not streamed
    assert not resumed.add(1)
    assert resumed.take(is_final=False) == "END"
    assert not resumed.add(2) and resumed.take(is_final=True) == " two"
