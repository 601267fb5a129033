"""Engine throughput against Hugging Face transformers on the same random-weight model, same run.

Measures prefill and decode tokens/s at batch 1 and the throughput of a set of mixed requests
(prompt and output lengths drawn from a range), for LLMEngine and for transformers `generate`
(padded batch and one-by-one; its better figure counts). Runs are interleaved and the best of
`--reps` is kept, because the machine is shared. Also a roofline for batch-1 decode: the step time
against (weight bytes + KV bytes read per step) / memory bandwidth measured in this run.

    .venv/bin/python benchmarks/engine.py            # ~100M-parameter model, 32 mixed requests
    .venv/bin/python benchmarks/engine.py --quick    # tiny model, smoke run

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import LLMEngine
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.tiny_model import make_tiny_model


# The clock every measurement reads; main() switches it to CPU time for --clock cpu.
now = time.perf_counter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and few requests (smoke run)")
    parser.add_argument("--model-dir", help="model folder to use instead of a fresh random one")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per measurement (best kept)")
    parser.add_argument("--num-requests", type=int, default=None, help="mixed workload size")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared "
                             "machine, use with --threads 1)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def workload(args: argparse.Namespace, vocab_size: int) -> dict:
    """Prompts (random token ids) and output lengths of the two workloads."""
    rng = random.Random(args.seed)
    quick = args.quick
    num_requests = args.num_requests or (4 if quick else 32)
    prompt_range, output_range = ((8, 48), (4, 12)) if quick else ((16, 384), (16, 128))

    def prompt(length: int) -> list[int]:
        return [rng.randrange(10, vocab_size) for _ in range(length)]

    return {
        "single_prompt": prompt(32 if quick else 128),
        "single_output": 8 if quick else 64,
        "mixed_prompts": [prompt(rng.randint(*prompt_range)) for _ in range(num_requests)],
        "mixed_outputs": [rng.randint(*output_range) for _ in range(num_requests)],
    }


def engine_single(engine: LLMEngine, prompt: list[int], num_output: int) -> dict:
    """Batch 1 on the engine: prefill time (to the first token) and per-token decode time."""
    params = SamplingParams(temperature=0.0, max_tokens=num_output, ignore_eos=True)
    engine.add_request("single", prompt, params)
    start = now()
    engine.step()
    first = now()
    step_times = []
    while engine.has_unfinished_requests():
        before = now()
        engine.step()
        step_times.append(now() - before)
    return {"prefill_s": first - start, "decode_step_s": statistics.median(step_times)}


def hf_single(hf_model, prompt: list[int], num_output: int) -> dict:
    """Batch 1 on transformers: generate 1 token, then num_output; the difference is decode."""
    input_ids = torch.tensor([prompt])
    start = now()
    _hf_generate(hf_model, input_ids, None, 1)
    first = now()
    _hf_generate(hf_model, input_ids, None, num_output)
    total = now() - first
    prefill = first - start
    return {"prefill_s": prefill, "decode_step_s": max(total - prefill, 1e-9) / (num_output - 1)}


def engine_mixed(engine: LLMEngine, prompts: list[list[int]], outputs: list[int]) -> float:
    """Seconds for the engine to serve all mixed requests (all submitted at once)."""
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in outputs]
    start = now()
    completions = engine.generate(prompts, params)
    elapsed = now() - start
    assert [len(c.token_ids) for c in completions] == outputs
    return elapsed


def hf_batched(hf_model, prompts: list[list[int]], outputs: list[int]) -> float:
    """Seconds for one left-padded batch generate of every prompt up to the longest output."""
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = now()
    _hf_generate(hf_model, input_ids, mask, max(outputs))
    return now() - start


def hf_sequential(hf_model, prompts: list[list[int]], outputs: list[int]) -> float:
    """Seconds for transformers to serve the requests one after another."""
    start = now()
    for prompt, num_output in zip(prompts, outputs):
        _hf_generate(hf_model, torch.tensor([prompt]), None, num_output)
    return now() - start


def _hf_generate(hf_model, input_ids: torch.Tensor, mask: torch.Tensor | None, num_new: int) -> None:
    with torch.inference_mode():
        hf_model.generate(input_ids, attention_mask=mask if mask is not None else torch.ones_like(input_ids),
                          do_sample=False, max_new_tokens=num_new, min_new_tokens=num_new, pad_token_id=0)


def memory_bandwidth(num_bytes: int = 512 * 2**20, reps: int = 5) -> dict:
    """Read (sum) and copy bandwidth in bytes/s, best of reps."""
    source = torch.ones(num_bytes // 4)
    target = torch.empty_like(source)
    read_s = min(_timed(source.sum) for _ in range(reps))
    copy_s = min(_timed(lambda: target.copy_(source)) for _ in range(reps))
    return {"read_bytes_per_s": num_bytes / read_s, "copy_bytes_per_s": 2 * num_bytes / copy_s}


def _timed(fn) -> float:
    start = now()
    fn()
    return now() - start


def decode_bytes_per_step(engine: LLMEngine, context_len: int) -> dict:
    """Bytes one batch-1 decode step must read: every weight once (the embedding table only when
    the LM head shares it) plus the KV of the context."""
    model = engine.runner.model
    embedding = model.model.embed_tokens.weight
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters()
                       if p is not embedding or model.config.tie_word_embeddings)
    spec = engine.kv_spec
    kv_bytes = spec.bytes_per_block_per_layer * spec.num_layers * context_len // spec.block_size
    return {"weight_bytes": weight_bytes, "kv_bytes": kv_bytes}


def best(runs: list[dict], key: str) -> float:
    """Smallest value of key over runs."""
    return min(run[key] for run in runs)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints its JSON."""
    global now
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    reps = args.reps or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(args.model_dir) if args.model_dir else make_tiny_model(
            Path(scratch) / "model", preset="tiny" if args.quick else "bench", seed=args.seed)
        result = run_benchmark(args, model_dir, reps)
    print(json.dumps(result, indent=2))
    return 0


def run_benchmark(args: argparse.Namespace, model_dir: Path, reps: int) -> dict:
    """Loads both implementations, runs the workloads interleaved, and gathers the figures."""
    import transformers

    config = EngineConfig(block_size=16, num_blocks=2048, max_num_seqs=32, max_num_batched_tokens=2048,
                          enable_prefix_caching=False)  # repeated prompts must be computed again
    engine = LLMEngine(model_dir, config)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    work = workload(args, engine.model_config.vocab_size)
    prompt, num_output = work["single_prompt"], work["single_output"]
    prompts, outputs = work["mixed_prompts"], work["mixed_outputs"]
    num_sequential = max(2, len(prompts) // 4)

    ours_single, hf_single_runs, ours_mixed, hf_batch_runs, hf_seq_runs = [], [], [], [], []
    for _ in range(reps):
        ours_single.append(engine_single(engine, prompt, num_output))
        hf_single_runs.append(hf_single(hf_model, prompt, num_output))
    for _ in range(max(1, reps - 1)):
        ours_mixed.append(engine_mixed(engine, prompts, outputs))
        hf_batch_runs.append(hf_batched(hf_model, prompts, outputs))
    hf_seq_runs.append(hf_sequential(hf_model, prompts[:num_sequential], outputs[:num_sequential]))

    generated = sum(outputs)
    ours_rate = generated / min(ours_mixed)
    hf_batch_rate = generated / min(hf_batch_runs)
    hf_seq_rate = sum(outputs[:num_sequential]) / min(hf_seq_runs)
    hf_best_rate = max(hf_batch_rate, hf_seq_rate)

    bandwidth = memory_bandwidth()
    step_bytes = decode_bytes_per_step(engine, len(prompt) + num_output // 2)
    roofline_s = (step_bytes["weight_bytes"] + step_bytes["kv_bytes"]) / bandwidth["read_bytes_per_s"]
    ours_step = best(ours_single, "decode_step_s")
    hf_step = best(hf_single_runs, "decode_step_s")
    return {
        "benchmark": "engine",
        "params": {"quick": args.quick, "threads": args.threads, "clock": args.clock, "reps": reps,
                   "seed": args.seed,
                   "model": engine.model_config.architecture,
                   "num_parameters": sum(p.numel() for p in engine.runner.model.parameters()),
                   "single_prompt_tokens": len(prompt), "single_output_tokens": num_output,
                   "num_mixed_requests": len(prompts), "mixed_prompt_tokens": sum(len(p) for p in prompts),
                   "mixed_output_tokens": generated, "hf_sequential_sample": num_sequential},
        "batch1": {
            "ours_prefill_tokens_per_s": len(prompt) / best(ours_single, "prefill_s"),
            "hf_prefill_tokens_per_s": len(prompt) / best(hf_single_runs, "prefill_s"),
            "ours_decode_tokens_per_s": 1.0 / ours_step,
            "hf_decode_tokens_per_s": 1.0 / hf_step,
            "prefill_speedup": best(hf_single_runs, "prefill_s") / best(ours_single, "prefill_s"),
            "decode_speedup": hf_step / ours_step,
        },
        "mixed": {
            "ours_output_tokens_per_s": ours_rate,
            "ours_total_tokens_per_s": (generated + sum(len(p) for p in prompts)) / min(ours_mixed),
            "hf_batched_output_tokens_per_s": hf_batch_rate,
            "hf_sequential_output_tokens_per_s": hf_seq_rate,
            "throughput_ratio_vs_best_hf": ours_rate / hf_best_rate,
        },
        "roofline": {
            **bandwidth, **step_bytes,
            "decode_step_s": ours_step,
            "roofline_step_s": roofline_s,
            "step_over_roofline": ours_step / roofline_s,
        },
    }


if __name__ == "__main__":
    sys.exit(main())
