"""LLMEngine against Hugging Face transformers on the tiny random models: greedy tokens, logprobs,
batching invariance with chunked prefill, seeded sampling, prefix reuse, forks and preemption."""

from __future__ import annotations

import pytest
import torch
import transformers

from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import LLMEngine
from tandem.engine.sampling_params import SamplingParams

torch.set_num_threads(1)

# Chunked prefill on: at most 16 tokens per step, so the longer prompts take several steps.
SMALL_STEPS = dict(block_size=4, num_blocks=256, max_num_seqs=8, max_num_batched_tokens=16)
PROMPTS = [
    [11, 22, 33, 44, 55],
    list(range(100, 137)),
    [7] * 3 + list(range(300, 320)),
    list(range(500, 570, 3)),
]
NUM_NEW = 12


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request):
    return request.getfixturevalue(f"tiny_{request.param}_dir")


@pytest.fixture(scope="module")
def hf_model(model_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # plain argmax for as long as asked
    return model


def hf_greedy(hf_model, prompt: list[int], num_new: int = NUM_NEW) -> list[int]:
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                do_sample=False, max_new_tokens=num_new, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def greedy(num_new: int = NUM_NEW, **extra) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=num_new, ignore_eos=True, **extra)


def run_all(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[int]]:
    """Adds the requests, steps to the end and returns each request's tokens."""
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
    tokens: dict[str, list[int]] = {request_id: [] for request_id in requests}
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens[output.request_id] += output.new_token_ids
    return tokens


def test_greedy_matches_transformers_alone_and_batched(model_dir, hf_model):
    expected = [hf_greedy(hf_model, prompt) for prompt in PROMPTS]
    engine = LLMEngine(model_dir, EngineConfig(**SMALL_STEPS))
    alone = [engine.generate([prompt], greedy())[0].token_ids for prompt in PROMPTS]
    assert alone == expected
    # Batched, with later arrivals joining a running batch (continuous batching).
    engine = LLMEngine(model_dir, EngineConfig(**SMALL_STEPS, enable_prefix_caching=False))
    engine.add_request("r0", PROMPTS[0], greedy())
    engine.add_request("r1", PROMPTS[1], greedy())
    tokens = {f"r{i}": [] for i in range(len(PROMPTS))}
    for step in range(200):
        if step == 3:
            engine.add_request("r2", PROMPTS[2], greedy())
            engine.add_request("r3", PROMPTS[3], greedy())
        for output in engine.step():
            tokens[output.request_id] += output.new_token_ids
        if step > 3 and not engine.has_unfinished_requests():
            break
    assert [tokens[f"r{i}"] for i in range(len(PROMPTS))] == expected


def test_logprobs_match_log_softmax_of_transformers_logits(model_dir, hf_model):
    engine = LLMEngine(model_dir, EngineConfig(**SMALL_STEPS))
    prompt = PROMPTS[1]
    completion = engine.generate([prompt], greedy(6, logprobs=True, top_logprobs=3))[0]
    with torch.inference_mode():
        logits = hf_model(torch.tensor([prompt + completion.token_ids])).logits[0].float()
    reference = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # rows that chose each token
    for position, entry in enumerate(completion.logprobs):
        assert entry.token_id == completion.token_ids[position]
        assert entry.logprob == pytest.approx(reference[position, entry.token_id].item(), abs=1e-4)
        assert [token_id for token_id, _ in entry.top] == reference[position].topk(3).indices.tolist()


def test_seeded_sampling_repeats_alone_or_batched(model_dir):
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=1234, max_tokens=16, ignore_eos=True)
    engine = LLMEngine(model_dir, EngineConfig(**SMALL_STEPS))
    alone = engine.generate([PROMPTS[1]], params)[0].token_ids
    others = {f"o{i}": (prompt, SamplingParams(seed=i, max_tokens=10, ignore_eos=True))
              for i, prompt in enumerate(PROMPTS)}
    batched = run_all(engine, {"seeded": (PROMPTS[1], params), **others})
    assert batched["seeded"] == alone
    other_seed = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=99, max_tokens=16, ignore_eos=True)
    assert engine.generate([PROMPTS[1]], other_seed)[0].token_ids != alone


def test_filters_that_keep_one_token_equal_greedy(model_dir, hf_model):
    expected = hf_greedy(hf_model, PROMPTS[2])
    engine = LLMEngine(model_dir, EngineConfig(**SMALL_STEPS))
    top_k_one = SamplingParams(temperature=1.5, top_k=1, seed=3, max_tokens=NUM_NEW, ignore_eos=True)
    tiny_top_p = SamplingParams(temperature=1.5, top_p=1e-6, seed=4, max_tokens=NUM_NEW, ignore_eos=True)
    results = engine.generate([PROMPTS[2], PROMPTS[2]], [top_k_one, tiny_top_p])
    assert [c.token_ids for c in results] == [expected, expected]


def test_prefix_reuse_computes_only_the_new_tokens(model_dir, hf_model):
    engine = LLMEngine(model_dir, EngineConfig(**SMALL_STEPS))
    shared = list(range(100, 132))  # 8 full blocks of 4
    engine.generate([shared + [7, 8, 9]], greedy(4))
    spans = []
    engine.set_layer_hook(lambda layer, step_spans: spans.extend(step_spans) if layer == 0 else None)
    second_prompt = shared + [40, 41, 42, 43, 44]
    completion = engine.generate([second_prompt], greedy())[0]
    assert completion.num_cached_prompt_tokens == 32
    # Only the 5 new prompt tokens ran through the model.
    assert [(start, end) for _, _, start, end in spans] == [(32, 37)]
    assert completion.token_ids == hf_greedy(hf_model, second_prompt)
    assert engine.stats().num_blocks_cached > 0


def test_preemption_under_a_tiny_cache_gives_the_same_tokens(model_dir, hf_model):
    prompts = [list(range(100 + 40 * i, 120 + 40 * i)) for i in range(3)]
    expected = [hf_greedy(hf_model, prompt, 16) for prompt in prompts]
    # 3 requests x 36 tokens need 27 blocks of 4; 12 blocks force preemption and recomputation.
    engine = LLMEngine(model_dir, EngineConfig(block_size=4, num_blocks=12, max_num_seqs=4,
                                               max_num_batched_tokens=64))
    completions = engine.generate(prompts, greedy(16))
    assert [c.token_ids for c in completions] == expected
    assert engine.stats().num_preemptions > 0
    assert engine.stats().num_blocks_used == 0


def test_fork_equals_an_independent_request_with_the_same_seed(model_dir):
    engine = LLMEngine(model_dir, EngineConfig(**SMALL_STEPS))
    prompt = PROMPTS[0]

    def seeded(seed: int) -> SamplingParams:
        return SamplingParams(temperature=1.0, seed=seed, max_tokens=8, ignore_eos=True)

    independent = engine.generate([prompt], seeded(77))[0].token_ids
    engine.add_request("parent", prompt, seeded(77))
    (first,) = engine.step()
    engine.fork("parent", "same-seed", seeded(77))
    engine.fork("parent", "other-seed", seeded(78))
    assert engine.block_ids("same-seed") == engine.block_ids("other-seed") == engine.block_ids("parent")
    tokens = {request_id: list(first.new_token_ids) for request_id in ("parent", "same-seed", "other-seed")}
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens[output.request_id] += output.new_token_ids
    # Token k of any request with seed 77 uses draw k of that seed, forked or not.
    assert tokens["parent"] == tokens["same-seed"] == independent
    assert tokens["other-seed"][0] == independent[0] and tokens["other-seed"] != independent
    assert engine.stats().num_blocks_used == 0


def test_fork_copies_the_shared_partial_block_before_writing(model_dir, hf_model):
    engine = LLMEngine(model_dir, EngineConfig(**SMALL_STEPS, enable_prefix_caching=False))
    prompt = PROMPTS[0]  # 5 tokens: the second block is partial and shared after the fork
    engine.add_request("parent", prompt, greedy(8))
    (first,) = engine.step()
    engine.fork("parent", "child", greedy(8))
    tokens = {"parent": list(first.new_token_ids), "child": list(first.new_token_ids)}
    for output in engine.step():
        tokens[output.request_id] += output.new_token_ids
    assert engine.block_ids("parent")[0] == engine.block_ids("child")[0]
    assert engine.block_ids("parent")[1] != engine.block_ids("child")[1]
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens[output.request_id] += output.new_token_ids
    assert tokens["parent"] == tokens["child"] == hf_greedy(hf_model, prompt, 8)
