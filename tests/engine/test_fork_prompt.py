"""Forks at the prompt: parallel samples of one prompt share its KV blocks, and each draws its own
first token exactly as an independent request with its seed would."""

from __future__ import annotations

import pytest

from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import LLMEngine
from tandem.engine.sampling_params import SamplingParams

PROMPT = list(range(20, 30))  # 10 tokens: two full blocks of 4 and a partial one


def seeded(seed: int) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=6, ignore_eos=True)


def _run(engine: LLMEngine, tokens: dict[str, list[int]]) -> dict[str, list[int]]:
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
    return tokens


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_a_prompt_fork_equals_an_independent_request_and_shares_the_prompt_blocks(tiny_llama_dir,
                                                                                   prefix_caching):
    config = dict(block_size=4, num_blocks=64, max_num_seqs=8, max_num_batched_tokens=16,
                  enable_prefix_caching=prefix_caching)
    independent = LLMEngine(tiny_llama_dir, EngineConfig(**config)).generate(
        [PROMPT, PROMPT], [seeded(7), seeded(8)])
    engine = LLMEngine(tiny_llama_dir, EngineConfig(**config))
    engine.add_request("parent", PROMPT, seeded(7))
    tokens = {"parent": list(engine.step()[0].new_token_ids)}
    engine.fork_prompt("parent", "sibling", seeded(8))
    assert engine.block_ids("sibling")[:2] == engine.block_ids("parent")[:2]
    computed = []
    execute = engine.runner.execute
    engine.runner.execute = lambda batch, *rest: computed.append(dict(zip(
        [s.request_id for s in batch.seqs], batch.num_new_tokens))) or execute(batch, *rest)
    _run(engine, tokens)
    assert tokens["parent"] == independent[0].token_ids
    assert tokens["sibling"] == independent[1].token_ids
    assert computed[0]["sibling"] == 1  # only the prompt's last token, again
    assert engine.stats().num_blocks_used == 0


def test_a_filled_reservation_can_be_forked_before_it_is_claimed(tiny_llama_dir):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(block_size=4, num_blocks=64))
    reference = LLMEngine(tiny_llama_dir, EngineConfig(block_size=4, num_blocks=64))
    prefilled = reference.generate([PROMPT], seeded(7))[0].token_ids
    # The reservation's blocks are filled from a prefill of the same weights on the same engine.
    engine.add_request("source", PROMPT, seeded(7), prefill_only=True)
    engine.step()
    block_ids, _ = engine.reserve("r", PROMPT)
    engine.runner.copy_blocks(list(zip(engine.block_ids("source"), block_ids)))
    engine.release("source")
    engine.fork_prompt("r", "r#1", seeded(8))
    engine.add_prefilled_request("r", PROMPT, prefilled[0], seeded(7))
    tokens = _run(engine, {"r": [prefilled[0]]})
    assert tokens["r"] == prefilled
    assert tokens["r#1"] == reference.generate([PROMPT], seeded(8))[0].token_ids
    assert engine.stats().num_blocks_used == 0


def test_a_request_without_its_prompts_kv_cannot_be_forked(tiny_llama_dir):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(block_size=4, num_blocks=64))
    engine.add_request("waiting", PROMPT, seeded(7))
    with pytest.raises(ValueError, match="holds no KV"):
        engine.fork_prompt("waiting", "child", seeded(8))
    with pytest.raises(ValueError, match="unknown request"):
        engine.fork_prompt("absent", "child", seeded(8))
