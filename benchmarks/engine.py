"""Engine throughput against Hugging Face transformers on the same random-weight model, same run.

Measures prefill and decode tokens/s at batch 1 and the throughput of a set of mixed requests, for
LLMEngine and for transformers `generate` (one left-padded batch, and one request at a time: its
better figure counts). Mixed requests take their prompt and output lengths either uniformly from
a range or from the Azure LLM conversation trace (scaled down to fit a CPU run). Runs are
interleaved and the best of `--reps` is kept, because the machine is shared. Also a roofline for
batch-1 decode: the step time against (weight bytes + KV bytes read per step) / memory bandwidth
measured in this run.

    .venv/bin/python benchmarks/engine.py                       # ~100M-parameter model, 32 requests
    .venv/bin/python benchmarks/engine.py --workload azure      # trace-shaped lengths
    .venv/bin/python benchmarks/engine.py --threads 1 --clock cpu   # steadier on a busy machine
    .venv/bin/python benchmarks/engine.py --quick               # tiny model, smoke run
    .venv/bin/python benchmarks/engine.py --model smollm2       # SmolLM2-135M from its GGUF file

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import LLMEngine
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.tiny_model import make_tiny_model
from tandem.serving.worker_args import resolve_model_dir

SHARED_DATA = Path(os.environ.get("TANDEM_SHARED_DATA",
                                  Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
AZURE_TRACE = "traces/azure_llm_2023_conv.csv"
# The Azure trace's lengths (median prompt ~1000, output ~130 tokens) divided by this, and clipped,
# keep the run to minutes on two CPU cores while keeping the trace's spread.
AZURE_SCALE = 8
PROMPT_CLIP, OUTPUT_CLIP = (8, 512), (4, 256)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests, on the tiny random model unless --model is given (smoke run)")
    parser.add_argument("--model", help="model to use instead of a fresh random one: a HF folder, a GGUF "
                                        "file or a folder holding one, 'smollm2' or 'tiny' (as the workers take)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per measurement (best kept)")
    parser.add_argument("--num-requests", type=int, default=None, help="mixed workload size")
    parser.add_argument("--workload", choices=("uniform", "azure"), default="uniform",
                        help="uniform: prompts 16-384, outputs 16-128 tokens; azure: lengths sampled "
                             f"from {AZURE_TRACE} divided by {AZURE_SCALE}")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared "
                             "machine, use with --threads 1)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def workload(args: argparse.Namespace, vocab_size: int) -> dict:
    """Prompts (random token ids) and output lengths of the batch-1 and mixed workloads."""
    rng = random.Random(args.seed)
    num_requests = args.num_requests or (4 if args.quick else 32)
    if args.quick:
        lengths = [(rng.randint(8, 48), rng.randint(4, 12)) for _ in range(num_requests)]
    elif args.workload == "azure":
        lengths = azure_lengths(rng, num_requests)
    else:
        lengths = [(rng.randint(16, 384), rng.randint(16, 128)) for _ in range(num_requests)]

    def prompt(length: int) -> list[int]:
        return [rng.randrange(10, vocab_size) for _ in range(length)]

    return {
        "single_prompt": prompt(32 if args.quick else 128),
        "single_output": 8 if args.quick else 64,
        "mixed_prompts": [prompt(n) for n, _ in lengths],
        "mixed_outputs": [n for _, n in lengths],
    }


def azure_lengths(rng: random.Random, num_requests: int) -> list[tuple[int, int]]:
    """(prompt, output) lengths of requests drawn from the Azure conversation trace, scaled down."""
    path = SHARED_DATA / AZURE_TRACE
    if not path.is_file():
        raise FileNotFoundError(f"--workload azure needs {path} (set TANDEM_SHARED_DATA)")
    with path.open(newline="") as trace:
        rows = [(int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in csv.DictReader(trace)]
    return [(_clip(context // AZURE_SCALE, PROMPT_CLIP), _clip(generated // AZURE_SCALE, OUTPUT_CLIP))
            for context, generated in rng.sample(rows, num_requests)]


def _clip(value: int, bounds: tuple[int, int]) -> int:
    return max(bounds[0], min(bounds[1], value))


class Runs:
    """The measurements, each read with one clock."""

    def __init__(self, engine: LLMEngine, hf_model, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.hf_model = hf_model
        self.clock = clock

    def engine_single(self, prompt: list[int], num_output: int) -> dict:
        """Batch 1 on the engine: prefill time (to the first token) and median decode step."""
        params = SamplingParams(temperature=0.0, max_tokens=num_output, ignore_eos=True)
        self.engine.add_request("single", prompt, params)
        start = self.clock()
        self.engine.step()
        first = self.clock()
        step_times = []
        while self.engine.has_unfinished_requests():
            before = self.clock()
            self.engine.step()
            step_times.append(self.clock() - before)
        return {"prefill_s": first - start, "decode_step_s": statistics.median(step_times)}

    def hf_single(self, prompt: list[int], num_output: int) -> dict:
        """Batch 1 on transformers: prefill time (to the first logits) and median decode step, from
        the times at which each step's logits reach a recording logits processor."""
        step_clock = StepClock(self.clock)
        start = self.clock()
        self._hf_generate(torch.tensor([prompt]), None, num_output, step_clock)
        times = step_clock.times
        step_times = [later - earlier for earlier, later in zip(times, times[1:])]
        return {"prefill_s": times[0] - start, "decode_step_s": statistics.median(step_times)}

    def engine_mixed(self, prompts: list[list[int]], outputs: list[int]) -> float:
        """Seconds for the engine to serve all mixed requests (all submitted at once)."""
        params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in outputs]
        start = self.clock()
        completions = self.engine.generate(prompts, params)
        elapsed = self.clock() - start
        if [len(c.token_ids) for c in completions] != outputs:
            raise RuntimeError("the engine did not produce the requested number of tokens")
        return elapsed

    def hf_batched(self, prompts: list[list[int]], outputs: list[int]) -> float:
        """Seconds for one left-padded batch generate of every prompt up to the longest output."""
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        start = self.clock()
        self._hf_generate(input_ids, mask, max(outputs))
        return self.clock() - start

    def hf_sequential(self, prompts: list[list[int]], outputs: list[int]) -> float:
        """Seconds for transformers to serve the requests one after another."""
        start = self.clock()
        for prompt, num_output in zip(prompts, outputs):
            self._hf_generate(torch.tensor([prompt]), None, num_output)
        return self.clock() - start

    def memory_bandwidth(self, num_bytes: int = 512 * 2**20, reps: int = 5) -> dict:
        """Read (sum) and copy bandwidth in bytes/s, best of reps."""
        source = torch.ones(num_bytes // 4)
        target = torch.empty_like(source)
        read_s = min(self._timed(source.sum) for _ in range(reps))
        copy_s = min(self._timed(lambda: target.copy_(source)) for _ in range(reps))
        return {"read_bytes_per_s": num_bytes / read_s, "copy_bytes_per_s": 2 * num_bytes / copy_s}

    def _timed(self, fn: Callable[[], object]) -> float:
        start = self.clock()
        fn()
        return self.clock() - start

    def _hf_generate(self, input_ids: torch.Tensor, mask: torch.Tensor | None, num_new: int,
                     step_clock: StepClock | None = None) -> None:
        mask = mask if mask is not None else torch.ones_like(input_ids)
        processors = [step_clock] if step_clock is not None else []
        with torch.inference_mode():
            self.hf_model.generate(input_ids, attention_mask=mask, do_sample=False, max_new_tokens=num_new,
                                   min_new_tokens=num_new, pad_token_id=0, logits_processor=processors)


class StepClock:
    """A transformers logits processor that changes nothing and records when each step's logits
    arrive (one call per generated token)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(self.clock())
        return scores


def decode_bytes_per_step(engine: LLMEngine, hf_model, context_len: int) -> dict:
    """Bytes one batch-1 decode step must read: every weight once (the embedding table only when
    the LM head shares it) plus the KV of the context. Weights are counted on the transformers
    copy, whose parameters are the same tensors in plain layout."""
    embedding = hf_model.get_input_embeddings().weight
    is_tied = hf_model.get_output_embeddings().weight is embedding
    weight_bytes = sum(p.numel() * p.element_size() for p in hf_model.parameters()
                       if p is not embedding or is_tied)
    spec = engine.kv_spec
    kv_bytes = spec.bytes_per_block_per_layer * spec.num_layers * context_len // spec.block_size
    return {"weight_bytes": weight_bytes, "kv_bytes": kv_bytes}


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints its JSON."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    reps = args.reps or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = resolve_model_dir(args.model) if args.model else make_tiny_model(
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
    runs = Runs(engine, hf_model, time.process_time if args.clock == "cpu" else time.perf_counter)
    work = workload(args, engine.model_config.vocab_size)
    prompt, num_output = work["single_prompt"], work["single_output"]
    prompts, outputs = work["mixed_prompts"], work["mixed_outputs"]
    num_sequential = max(2, len(prompts) // 4)

    ours_single, hf_single = [], []
    for _ in range(reps):
        ours_single.append(runs.engine_single(prompt, num_output))
        hf_single.append(runs.hf_single(prompt, num_output))
    ours_mixed, hf_batched = [], []
    for _ in range(max(1, reps - 1)):
        ours_mixed.append(runs.engine_mixed(prompts, outputs))
        hf_batched.append(runs.hf_batched(prompts, outputs))
    hf_sequential = runs.hf_sequential(prompts[:num_sequential], outputs[:num_sequential])
    bandwidth = runs.memory_bandwidth()

    generated, num_prompt_tokens = sum(outputs), sum(len(p) for p in prompts)
    ours_rate = generated / min(ours_mixed)
    hf_batch_rate = generated / min(hf_batched)
    hf_seq_rate = sum(outputs[:num_sequential]) / hf_sequential
    ours_prefill, hf_prefill = (min(r["prefill_s"] for r in runs_) for runs_ in (ours_single, hf_single))
    ours_step, hf_step = (min(r["decode_step_s"] for r in runs_) for runs_ in (ours_single, hf_single))
    step_bytes = decode_bytes_per_step(engine, hf_model, len(prompt) + num_output // 2)
    roofline_s = (step_bytes["weight_bytes"] + step_bytes["kv_bytes"]) / bandwidth["read_bytes_per_s"]
    return {
        "benchmark": "engine",
        "params": {"quick": args.quick, "threads": args.threads, "clock": args.clock, "reps": reps,
                   "seed": args.seed, "workload": "quick" if args.quick else args.workload,
                   "model": engine.model_config.architecture, "model_source": args.model or "random",
                   "num_parameters": sum(p.numel() for p in hf_model.parameters()),
                   "single_prompt_tokens": len(prompt), "single_output_tokens": num_output,
                   "num_mixed_requests": len(prompts), "mixed_prompt_tokens": num_prompt_tokens,
                   "mixed_output_tokens": generated, "hf_sequential_sample": num_sequential},
        "batch1": {
            "ours_prefill_tokens_per_s": len(prompt) / ours_prefill,
            "hf_prefill_tokens_per_s": len(prompt) / hf_prefill,
            "ours_decode_tokens_per_s": 1.0 / ours_step,
            "hf_decode_tokens_per_s": 1.0 / hf_step,
            "prefill_speedup": hf_prefill / ours_prefill,
            "decode_speedup": hf_step / ours_step,
        },
        "mixed": {
            "ours_output_tokens_per_s": ours_rate,
            "ours_total_tokens_per_s": (generated + num_prompt_tokens) / min(ours_mixed),
            "hf_batched_output_tokens_per_s": hf_batch_rate,
            "hf_sequential_output_tokens_per_s": hf_seq_rate,
            "throughput_ratio_vs_best_hf": ours_rate / max(hf_batch_rate, hf_seq_rate),
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
