"""The engine hooks of disaggregated serving: prefill-only requests, layer hooks, reservations that
receive KV from another engine, prefilled requests joining a decode batch, release and abort."""

from __future__ import annotations

import pytest
import torch
import transformers

from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import CapacityError, LLMEngine
from tandem.engine.sampling_params import SamplingParams

torch.set_num_threads(1)

CHUNKED = dict(block_size=4, max_num_seqs=8, max_num_batched_tokens=16)
PROMPT = list(range(200, 237))  # 37 tokens: 10 blocks of 4, three prefill chunks of 16


def greedy(num_new: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=num_new, ignore_eos=True)


@pytest.fixture(scope="module")
def hf_model(tiny_llama_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return model


def hf_greedy(hf_model, prompt: list[int], num_new: int) -> list[int]:
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                do_sample=False, max_new_tokens=num_new, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_prefill_only_returns_first_token_and_hidden_state_then_holds_blocks(tiny_llama_dir, hf_model):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=64, **CHUNKED))
    engine.add_request("p", PROMPT, greedy(5), prefill_only=True)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    (output,) = outputs
    assert output.finished and output.finish_reason == "prefilled"
    assert output.new_token_ids == hf_greedy(hf_model, PROMPT, 1)
    with torch.inference_mode():
        hf_hidden = hf_model(torch.tensor([PROMPT]), output_hidden_states=True).hidden_states[-1][0, -1]
    torch.testing.assert_close(output.hidden_state, hf_hidden, atol=1e-4, rtol=1e-4)
    assert len(engine.block_ids("p")) == 10
    assert engine.stats().num_blocks_reserved == 10
    assert engine.release("p") == 10
    assert engine.release("p") == 0
    with pytest.raises(ValueError, match="unknown request 'p'"):
        engine.block_ids("p")


def test_layer_hook_reports_each_chunk_after_every_layer(tiny_llama_dir):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=64, **CHUNKED))
    calls = []
    engine.set_layer_hook(lambda layer, spans: calls.append((layer, [(s[0], s[2], s[3]) for s in spans])))
    engine.add_request("p", PROMPT, greedy(3), prefill_only=True)
    while engine.has_unfinished_requests():
        engine.step()
    num_layers = engine.model_config.num_hidden_layers
    expected = [(layer, [("p", start, end)]) for start, end in ((0, 16), (16, 32), (32, 37))
                for layer in range(num_layers)]
    assert calls == expected


def disaggregate(prefill: LLMEngine, decode: LLMEngine, request_id: str, prompt: list[int],
                 params: SamplingParams) -> tuple[list[int], list[int]]:
    """Prefills on one engine, ships each layer's KV into the other's reservation as it is written,
    and decodes there; returns the tokens (the first, then the decoded ones) and the reservation."""
    target_blocks, num_cached = decode.reserve(request_id, prompt)
    assert num_cached == 0

    def ship(layer: int, spans) -> None:
        for _, source_blocks, start, end in spans:
            for index in range(start // 4, (end - 1) // 4 + 1):
                decode.kv_cache[layer, target_blocks[index]] = prefill.kv_cache[layer, source_blocks[index]]

    prefill.set_layer_hook(ship)
    prefill.add_request(request_id, prompt, params, prefill_only=True)
    (first,) = [o for _ in range(3) for o in prefill.step()]
    assert prefill.release(request_id) == len(target_blocks)
    decode.add_prefilled_request(request_id, prompt, first.new_token_ids[0], params)
    tokens = list(first.new_token_ids)
    while decode.has_unfinished_requests():
        tokens += [t for o in decode.step() if o.request_id == request_id for t in o.new_token_ids]
    return tokens, target_blocks


def test_kv_shipped_layer_by_layer_lets_another_engine_decode(tiny_llama_dir, hf_model):
    prefill = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=64, **CHUNKED))
    decode = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=48, **CHUNKED))
    decode.add_request("other", list(range(600, 630)), greedy(30))  # decode-side ids differ
    decode.step()
    tokens, target_blocks = disaggregate(prefill, decode, "r", PROMPT, greedy(8))
    assert tokens == hf_greedy(hf_model, PROMPT, 8)
    # The shipped prompt blocks are now a prefix cache entry on the decode side.
    again_blocks, num_cached = decode.reserve("again", PROMPT)
    assert num_cached == 9 and again_blocks[:9] == target_blocks[:9]
    assert decode.abort("again") == 10  # the revived cached blocks count as well


def test_a_seeded_disaggregated_request_equals_the_colocated_one(tiny_llama_dir):
    params = SamplingParams(temperature=1.0, seed=2024, max_tokens=10, ignore_eos=True)
    colocated = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=64, **CHUNKED))
    expected = colocated.generate([PROMPT], params)[0].token_ids
    prefill = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=64, **CHUNKED))
    decode = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=64, **CHUNKED))
    assert disaggregate(prefill, decode, "r", PROMPT, params)[0] == expected


def test_a_prefilled_request_ending_at_its_first_token_reports_it(tiny_llama_dir):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=64, **CHUNKED))
    engine.reserve("r", PROMPT)
    engine.add_prefilled_request("r", PROMPT, 42, SamplingParams(max_tokens=1))
    (output,) = engine.step()
    assert output.finished and output.finish_reason == "length" and output.new_token_ids == []
    assert engine.stats().num_blocks_used == 0


def test_reservation_errors_are_clear_and_change_nothing(tiny_llama_dir):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=12, **CHUNKED))
    engine.reserve("r", PROMPT)
    before = engine.stats()
    with pytest.raises(CapacityError, match="cannot reserve 10 KV blocks"):
        engine.reserve("r2", PROMPT[::-1])
    with pytest.raises(ValueError, match="already in use"):
        engine.reserve("r", PROMPT)
    with pytest.raises(ValueError, match="has no reservation"):
        engine.add_prefilled_request("nope", PROMPT, 1, greedy(4))
    with pytest.raises(ValueError, match="prompt differs"):
        engine.add_prefilled_request("r", PROMPT[:-1], 1, greedy(4))
    with pytest.raises(ValueError, match="cannot be forked"):
        engine.fork("r", "r/1", greedy(4))
    engine.add_request("queued", [1, 2, 3], greedy(4))
    with pytest.raises(ValueError, match="release frees prefilled or reserved"):
        engine.release("queued")
    assert engine.stats().num_blocks_reserved == before.num_blocks_reserved
    assert engine.abort("r") == 10
    assert engine.abort("unknown") == 0
