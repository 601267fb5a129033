"""Per-prompt CPU latency of the router's difficulty estimators, one prompt at a time.

The router scores each request before any GPU work, one prompt per call (in a worker thread), so
what matters is the latency of `score([prompt])` at batch 1. Both estimators are trained on a
slice of RouteLLM's MMLU data and timed on other MMLU prompts (real lengths: median about 60
words, up to several hundred). The `features` estimator is the baseline measured in the same
run; the `embedding` estimator adds a MiniLM forward pass (truncated at 256 tokens) and one
neighbour lookup over its training prompts. The MiniLM encoder is warmed up before timing.

    .venv/bin/python benchmarks/difficulty_latency.py            # 200 timed prompts
    .venv/bin/python benchmarks/difficulty_latency.py --threads 2 --clock wall
    .venv/bin/python benchmarks/difficulty_latency.py --quick    # smoke run

Prints one JSON object. Needs ../shared/data (or $TANDEM_SHARED_DATA).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this folder comes first on sys.path and benchmarks/router.py would shadow the
# `router` package: drop the folder (this script imports nothing that lives beside it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tandem.difficulty.embedding_estimator import EmbeddingEstimator  # noqa: E402
from tandem.difficulty.feature_estimator import FeatureEstimator  # noqa: E402
from tandem.difficulty.minilm import MiniLMEncoder  # noqa: E402
from tandem.difficulty.training.data import (RoutingDataset, load_routing_csvs,  # noqa: E402
                                             shared_data_dir)

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few prompts (smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: process CPU time (steady on a busy shared machine); wall: elapsed")
    parser.add_argument("--num-train", type=int, default=None, help="training prompts")
    parser.add_argument("--num-timed", type=int, default=None, help="timed prompts")
    args = parser.parse_args(argv)
    args.num_train = args.num_train or (120 if args.quick else 2000)
    args.num_timed = args.num_timed or (10 if args.quick else 200)
    if args.threads < 1 or args.num_train < 40 or args.num_timed < 1:
        parser.error("need --threads >= 1, --num-train >= 40 and --num-timed >= 1")
    return args


def split(dataset: RoutingDataset, num_train: int, num_timed: int) -> tuple[RoutingDataset, list[str]]:
    """Every other evenly spaced row trains; the rows in between are timed."""
    order = np.linspace(0, len(dataset) - 1, 2 * max(num_train, num_timed)).round().astype(np.int64)
    train = dataset.subset(order[0::2][:num_train])
    return train, [dataset.prompts[i] for i in order[1::2][:num_timed]]


def time_per_prompt(scorers: dict[str, Callable[[list[str]], object]], prompts: list[str],
                    clock: Callable[[], float]) -> dict[str, dict[str, float]]:
    """Milliseconds of scorer([prompt]) per prompt: median, p90, max, mean of each scorer.

    The scorers take turns on each prompt, so a burst of load on the shared machine hits all of
    them alike and their ratio stays fair.
    """
    samples: dict[str, list[float]] = {name: [] for name in scorers}
    for prompt in prompts:
        for name, score in scorers.items():
            started = clock()
            score([prompt])
            samples[name].append(1000.0 * (clock() - started))
    summary = {}
    for name, values in samples.items():
        values.sort()
        summary[name] = {"p50_ms": round(statistics.median(values), 3),
                         "p90_ms": round(values[int(0.9 * (len(values) - 1))], 3),
                         "max_ms": round(values[-1], 3), "mean_ms": round(statistics.fmean(values), 3)}
    return summary


def main(argv: list[str] | None = None) -> None:
    """Trains both estimators, times them one prompt at a time and prints JSON."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_routing_csvs([str(shared_data_dir() / "routing" / "mmlu" / "mmlu_*.csv")],
                                "prompt", WEAK, STRONG)
    train, timed = split(dataset, args.num_train, args.num_timed)
    encoder = MiniLMEncoder()
    features = FeatureEstimator().fit(train)
    embedding = EmbeddingEstimator(embedder=encoder.encode).fit(train)
    encoder.encode(timed[:4])  # warm-up: first calls allocate and pick kernels
    times = time_per_prompt({"features": features.score, "minilm_encode_only": encoder.encode,
                             "embedding": embedding.score}, timed,
                            time.process_time if args.clock == "cpu" else time.perf_counter)
    words = [len(prompt.split()) for prompt in timed]
    print(json.dumps({
        "benchmark": "difficulty_latency",
        "parameters": {"quick": args.quick, "threads": args.threads, "clock": args.clock,
                       "num_train": len(train),
                       "num_timed": len(timed), "median_prompt_words": statistics.median(words),
                       "max_prompt_words": max(words)},
        **times,
        "embedding_over_features_p50": round(times["embedding"]["p50_ms"]
                                             / times["features"]["p50_ms"], 1),
    }, indent=2))


if __name__ == "__main__":
    main()
