"""Autoscaling on the Azure conversation trace's own load variation: static vs HPA-like vs phase-aware.

The trace is replayed on its own timeline with `--load-scale` times its load (jittered copies, so
its variation over the hour stays) on a Splitwise-HH cluster (H100 prefill and decode pools,
Llama2-70B). Three ways to size the pools are compared:

- static: fixed pools, the smallest that meet every SLO over the whole replay (provisioned for the
  peak with hindsight: an oracle no operator has, found by search);
- static-at-phase-peak: fixed pools at the largest sizes the phase policy reached (provisioned for
  the peak by the same capacity model the phase policy uses);
- utilization: `tandem.policy.autoscaling.UtilizationAutoscaler`, one utilisation metric against a
  0.7 target per pool (HPA-like);
- phase: `tandem.policy.autoscaling.PhaseAutoscaler`, each pool sized by its own phase's load
  against its capacity at the SLO (a prefill machine planned at 80% of its peak throughput).

Both autoscaled runs start at the static sizes, tick every 15 s and wait `--provision-delay` seconds
for each new machine. The script prints one JSON object: GPU-hours, cost, SLO attainment, latency
percentiles and the number of scaling actions of each.

    .venv/bin/python benchmarks/simulate_autoscaling.py           # whole hour, 8x the load
    .venv/bin/python benchmarks/simulate_autoscaling.py --quick   # first 10 minutes, 2x the load
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from tandem.sim.config import AutoscaleMode, Design, SimConfig
from tandem.sim.hardware import shared_data_dir
from tandem.sim.simulate import simulate
from tandem.sim.traces import amplify, load_trace, window


def run(args, trace, mode: AutoscaleMode, num_prefill: int, num_decode: int, out=None,
        label: str | None = None) -> dict:
    """One replay; returns the summary fields the comparison reports."""
    config = SimConfig(design=Design.SPLITWISE, prefill_gpu="H100", decode_gpu="H100",
                       num_prefill=num_prefill, num_decode=num_decode, autoscale=mode,
                       autoscale_interval_s=15.0, provision_delay_s=args.provision_delay,
                       min_machines=1, max_machines=4 * max(num_prefill, num_decode))
    result, summary = simulate(config, trace)
    if out is not None:
        from tandem.sim.cli import write_outputs

        write_outputs(result, summary, out / (label or mode.value))
    timeline = result.replica_timeline
    return {
        "policy": label or mode.value, "initial_machines": {"prefill": num_prefill, "decode": num_decode},
        "peak_machines": {pool: max(p["desired"] for p in timeline if p["pool"] == pool)
                          for pool in ("prefill", "decode")},
        "gpu_hours": round(summary["gpu_hours"], 2), "cost": round(summary["cost"], 2),
        "energy_kwh": round(summary["energy_kwh"], 1),
        "slo_met": summary["slo"]["is_met"], "slo_attainment": round(summary["slo"]["attainment"], 4),
        "slowdown": {k: {p: round(x, 3) for p, x in v["slowdown"].items()}
                     for k, v in summary["slo"]["checks"].items()},
        "ttft_s": summary["ttft_s"], "tbt_s": summary["tbt_s"],
        "num_scaling_actions": summary["scaling"]["num_actions"],
        "num_requests": summary["num_requests"],
    }


def static_for_peak(args, trace) -> tuple[tuple[int, int], list]:
    """The smallest static (prefill, decode) sizes meeting every SLO over the whole replay.

    Assumes more machines never hurt: the smallest equal sizes k by doubling and bisection, then
    the smallest prefill pool beside k decode machines, then the smallest decode pool beside that.
    """
    tried: dict[tuple[int, int], bool] = {}

    def ok(sizes: tuple[int, int]) -> bool:
        if sizes not in tried:
            tried[sizes] = run(args, trace, AutoscaleMode.STATIC, *sizes)["slo_met"]
        return tried[sizes]

    high = 1
    while not ok((high, high)):
        high *= 2
    k = _smallest(lambda n: ok((n, n)), high // 2 + 1, high)
    num_prefill = _smallest(lambda n: ok((n, k)), 1, k)
    num_decode = _smallest(lambda n: ok((num_prefill, n)), 1, k)
    return (num_prefill, num_decode), [{"prefill": p, "decode": d, "slo_met": met}
                                       for (p, d), met in tried.items()]


def _smallest(is_enough, low: int, high: int) -> int:
    # The smallest n in [low, high] with is_enough(n), given is_enough(high) and monotonicity.
    while low < high:
        middle = (low + high) // 2
        if is_enough(middle):
            high = middle
        else:
            low = middle + 1
    return high


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="first 10 minutes, 2x the load")
    parser.add_argument("--load-scale", type=int, help="K times the load, same timeline (default 8)")
    parser.add_argument("--duration", type=float, help="seconds of the trace (default: all)")
    parser.add_argument("--provision-delay", type=float, default=120.0)
    parser.add_argument("--trace", type=pathlib.Path,
                        default=shared_data_dir() / "traces" / "azure_llm_2023_conv.csv")
    parser.add_argument("--out", type=pathlib.Path, help="write each policy's summary and plots here")
    args = parser.parse_args()
    scale = args.load_scale or (2 if args.quick else 8)
    duration = args.duration or (600.0 if args.quick else None)
    trace = load_trace(args.trace)
    if duration is not None:
        trace = window(trace, 0.0, duration)
    trace = amplify(trace, scale, seed=0)
    started, cpu_started = time.perf_counter(), time.process_time()
    sizes, tried = static_for_peak(args, trace)
    rows = [run(args, trace, mode, *sizes, out=args.out)
            for mode in (AutoscaleMode.STATIC, AutoscaleMode.UTILIZATION, AutoscaleMode.PHASE)]
    # What an operator sizing by the phase policy's own capacity model would provision statically.
    peak = rows[-1]["peak_machines"]
    rows.insert(1, run(args, trace, AutoscaleMode.STATIC, peak["prefill"], peak["decode"],
                       out=args.out, label="static-at-phase-peak"))
    static_hours = rows[0]["gpu_hours"]
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    result = {
        "benchmark": "simulate_autoscaling",
        "parameters": {"trace": str(args.trace), "load_scale": scale, "duration_s": duration,
                       "num_requests": len(trace), "design": "Splitwise-HH (H100 prefill, H100 decode)",
                       "provision_delay_s": args.provision_delay, "interval_s": 15.0,
                       "scale_down_stabilization_s": 300.0, "utilization_target": 0.7,
                       "prefill_capacity_fraction": 0.8,
                       "quick": args.quick},
        "static_search": {"tried": tried},
        "policies": rows,
        "gpu_hours_vs_static": {r["policy"]: round(r["gpu_hours"] / static_hours, 3) for r in rows},
        "gpu_hours_vs_static_at_phase_peak": {
            r["policy"]: round(r["gpu_hours"] / rows[1]["gpu_hours"], 3) for r in rows},
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
