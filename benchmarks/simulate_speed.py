"""How fast the cluster simulator runs: simulated requests per second of wall and CPU time.

Two measurements, each the whole pipeline in one process (load or generate the trace, simulate,
summarise), single-threaded:

- the whole Azure conversation trace (19,366 requests) replayed on its own timeline on a
  Splitwise-HH cluster (goal: under 10 s);
- a 1,000,000-request replay with Poisson arrivals and sizes drawn from the same trace, on a
  40-machine Splitwise-HH cluster at a rate it sustains within the SLOs (goal: under 5 minutes).

CPU time is this process's own (`time.process_time`), so it stays meaningful on a shared machine;
wall time is what a user waits.

    .venv/bin/python benchmarks/simulate_speed.py            # both, 1M requests (about a minute)
    .venv/bin/python benchmarks/simulate_speed.py --quick    # 5 minutes of the trace, 20k requests
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import time

from tandem.sim.config import Design, SimConfig
from tandem.sim.hardware import shared_data_dir
from tandem.sim.simulate import simulate
from tandem.sim.traces import load_trace, poisson, window

GOALS_S = {"azure_trace": 10.0, "poisson_1m": 300.0}


def timed(label: str, make_trace, config: SimConfig, goal_s: float | None) -> dict:
    """Builds a trace and simulates it; returns the timings and what the run produced."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    trace = make_trace()
    wall1, cpu1 = time.perf_counter(), time.process_time()
    result, summary = simulate(config, trace)
    wall2, cpu2 = time.perf_counter(), time.process_time()
    num_iterations = sum(m.num_iterations for m in result.machines)
    row = {
        "run": label, "num_requests": len(trace), "design": config.design.value,
        "machines": {p["name"]: p["initial_machines"] for p in summary["pools"]},
        "offered_rate_rps": round(summary["throughput"]["offered_requests_per_s"], 2),
        "simulated_s": round(summary["simulated_s"], 1), "num_decode_iterations": num_iterations,
        "slo_met": summary["slo"]["is_met"],
        "trace_wall_s": round(wall1 - wall0, 2), "simulate_wall_s": round(wall2 - wall1, 2),
        "total_wall_s": round(wall2 - wall0, 2), "total_cpu_s": round(cpu2 - cpu0, 2),
        "requests_per_wall_s": round(len(trace) / max(wall2 - wall0, 1e-9)),
        "requests_per_cpu_s": round(len(trace) / max(cpu2 - cpu0, 1e-9)),
    }
    if goal_s is not None:
        row["goal_s"] = goal_s
        row["meets_goal_wall"] = row["total_wall_s"] < goal_s
        row["meets_goal_cpu"] = row["total_cpu_s"] < goal_s
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 minutes of the trace, 20k requests")
    parser.add_argument("--num-requests", type=int, help="Poisson replay size (default 1,000,000)")
    parser.add_argument("--rate", type=float, default=100.0, help="Poisson arrivals per second")
    parser.add_argument("--trace", type=pathlib.Path,
                        default=shared_data_dir() / "traces" / "azure_llm_2023_conv.csv")
    args = parser.parse_args()
    num_requests = args.num_requests or (20_000 if args.quick else 1_000_000)
    duration = 300.0 if args.quick else None
    sizes = load_trace(args.trace)

    def azure():
        trace = load_trace(args.trace)
        return window(trace, 0.0, duration) if duration is not None else trace

    # The trace's own load (about 5.5 requests/s, peaks near 7.5) on 2 prefill + 3 decode H100s;
    # the Poisson rate on 15 + 25 H100s, which meets the Splitwise SLOs at 100 requests/s.
    rows = [
        timed("azure_trace", azure, SimConfig(design=Design.SPLITWISE, num_prefill=2, num_decode=3),
              None if args.quick else GOALS_S["azure_trace"]),
        timed(f"poisson_{num_requests}", lambda: poisson(sizes, args.rate, num_requests, seed=0),
              SimConfig(design=Design.SPLITWISE, num_prefill=15, num_decode=25),
              GOALS_S["poisson_1m"] if num_requests >= 1_000_000 else None),
    ]
    result = {
        "benchmark": "simulate_speed",
        "parameters": {"trace": str(args.trace), "poisson_rate_rps": args.rate,
                       "poisson_num_requests": num_requests, "azure_window_s": duration,
                       "quick": args.quick, "python": sys.version.split()[0]},
        "runs": rows,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
