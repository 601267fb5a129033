"""Router overhead: latency it adds to each token, tokens/s it can relay, and where its time goes.

1. Added latency. One decode worker (tiny random-weight model) behind one router, every request
   colocated (--min-disaggregate-tokens very high), so a request through the router's
   `Inference/Generate` and the same request sent straight to the worker's `DecodeWorker/Decode`
   (colocated, same prompt, greedy, same max_tokens) do the same engine work. At 1, 32 and 200
   concurrent streams an asyncio gRPC client runs bursts (one stream per prompt, all at once),
   router and direct bursts alternating in ABBA order so that drifts in the shared machine's load
   hit both alike. Reported: p50/p99 of time to first token (TTFT) and of inter-token latency
   (ITL: gap between token-bearing messages per token) for both, and added = router - direct.
2. Relay capacity. Synthetic decode workers (benchmarks/router_token_source.py: the DecodeWorker
   contract, tokens of real text sent as fast as gRPC allows) stand in for an infinitely fast
   engine, so the router is the process that saturates. Many streams stay open (a finished one is
   replaced at once); over a window the client counts tokens received and /proc/<pid>/stat gives
   the CPU seconds of the router, the token sources and the client. Relay capacity = tokens per
   router CPU-second: what one router process relays with one core to itself (its Python code is
   single-threaded), and a clean figure on a shared machine, where raw tokens/s depends on the
   CPU the other processes leave it. Raw tokens/s and each process's cores used are reported too,
   at 1 token per chunk (the real worker's shape: one chunk per engine step) and more, and for real
   tiny-model decode workers.
   A bare grpc.aio relay (benchmarks/router_bare_relay.py: same RPCs and messages, no router
   logic) on the same token sources gives the floor that any Python grpc.aio relay pays; router
   and bare-relay windows alternate (ABBA) and the median window counts. One-token requests give
   the same comparison per request (what TTFT pays for setting a request up).
3. Profile. The router of part 2 runs under profilers that signals switch on for one window each
   (benchmarks/router_profile.py): a stack sampler (low overhead) and cProfile (exact call counts,
   inflated Python time), each over the relay load and over one-token requests. Hot spots are
   reported per relayed token and per request, by function and by component (router code,
   detokenization, gRPC, protobuf, asyncio, telemetry). With --perf, Linux perf samples another
   window natively (Python interpreter against gRPC's native core, protobuf and the kernel).

    .venv/bin/python benchmarks/router.py                 # full run (about 5 minutes)
    .venv/bin/python benchmarks/router.py --perf          # plus the native profile (needs perf)
    .venv/bin/python benchmarks/router.py --quick         # smoke run (about 30 s)

The scripts benchmarks/router_*.py are this benchmark's parts.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from router_latency import GOAL_MS, latency_part, worst_added
from router_relay import GOAL_TOKENS_PER_S, real_worker_relay, relay_part
from router_setup import FULL, QUICK

from tandem.engine.tiny_model import make_tiny_model

METHOD = {
    "latency": "Same greedy colocated requests through the router (Inference/Generate) and straight "
               "to the decode worker (DecodeWorker/Decode); bursts of N concurrent streams, router "
               "and direct alternating ABBA; TTFT from call to first token-bearing message, ITL = gap "
               "between token-bearing messages / tokens in the message; added = router - direct "
               "at p50 and p99.",
    "relay_capacity": "Synthetic decode workers stream tokens of real text as fast as gRPC allows; "
                      "N streams kept open through one router; over a window, tokens received by the "
                      "client divided by the router process's CPU seconds (utime+stime of all its "
                      "threads from /proc/<pid>/stat) = tokens per router CPU-second, the relay "
                      "capacity of one router process on one core. Raw tokens/s and every process's "
                      "cores used are reported alongside (the machine is shared, so raw tokens/s is "
                      "a floor). A bare grpc.aio relay on the same sources gives the floor of any "
                      "Python grpc.aio relay; real tiny-model workers show the engine-limited case.",
    "profile": "Signal-switched profilers inside the router process, one load window each, at 1 token "
               "per chunk, over the relay load (per token) and over one-token requests (per request): "
               "stack sampling of the event-loop thread (samples land where the main thread releases "
               "the GIL, so they lean towards gRPC's Cython code and syscalls such as os.urandom), "
               "times per unit = share of busy samples x the router's CPU per unit in that window; "
               "cProfile (exact call counts, a coroutine's every resumption counted as a call; its "
               "overhead inflates Python code: compare busy_us_per_* with router_cpu_us_per_*). "
               "With --perf, Linux perf's split of the router's CPU by shared object and symbol.",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--perf", action="store_true",
                        help="also profile the router natively with Linux perf (must be installed)")
    parser.add_argument("--model-dir", help="model folder to use instead of a fresh tiny one")
    parser.add_argument("--run-dir", help="keep logs and profiles in this (new or empty) folder "
                                           "instead of a temporary one")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs every part and prints the JSON report."""
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    started = time.monotonic()
    with _run_folder(args.run_dir) as run_dir:
        model_dir = Path(args.model_dir) if args.model_dir else make_tiny_model(run_dir / "tiny-llama")
        num_prompts = max(*settings.concurrencies, settings.relay_streams)
        prompts = make_prompts(model_dir, num_prompts, settings.prompt_len, args.seed)
        report = {"params": {"quick": args.quick, "perf": args.perf, "seed": args.seed,
                             "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(),
                             **settings.as_dict()},
                  "method": METHOD}
        # One real worker: the relay over real workers reuses the latency cluster (saves a start).
        reuse = settings.num_real_workers == 1
        report["latency"], real = latency_part(
            model_dir, run_dir, settings, prompts,
            (lambda cluster: real_worker_relay(cluster, settings, prompts)) if reuse else None)
        report["relay_capacity"], report["profile"] = relay_part(model_dir, run_dir, settings, prompts,
                                                                 real, args.perf)
    report["goals"] = goals(report)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))
    return 0


@contextlib.contextmanager
def _run_folder(path: str | None):
    if path is None:
        with tempfile.TemporaryDirectory(prefix="tandem-router-bench-") as tmp:
            yield Path(tmp)
        return
    run_dir = Path(path)
    run_dir.mkdir(parents=True, exist_ok=True)
    if any(run_dir.iterdir()):
        raise SystemExit(f"--run-dir {run_dir} is not empty")
    yield run_dir


def make_prompts(model_dir: Path, count: int, length: int, seed: int) -> list[list[int]]:
    """Distinct random prompts of ordinary (non-special) token ids."""
    vocab_size = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    rng = random.Random(seed)
    # Special tokens sit at the top of the tiny tokenizer's vocabulary; stay well below them.
    return [[rng.randrange(16, vocab_size - 64) for _ in range(length)] for _ in range(count)]


def goals(report: dict) -> dict:
    """Each goal with the measured figure next to it."""
    capacity = report["relay_capacity"]["tokens_per_router_cpu_s"]
    return {"added_latency_goal_ms": GOAL_MS,
            "worst_added_ms": worst_added(report["latency"]),
            "latency_goal_met": all(e["meets_goal"] for e in report["latency"]["by_concurrency"]),
            "relay_goal_tokens_per_router_cpu_s": GOAL_TOKENS_PER_S,
            "relay_capacity_tokens_per_router_cpu_s": capacity,
            "relay_goal_met": capacity is not None and capacity >= GOAL_TOKENS_PER_S}


if __name__ == "__main__":
    sys.exit(main())
