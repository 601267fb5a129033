"""Autoscaling on the Azure conversation trace's own load variation: static vs HPA-like vs phase-aware.

The trace's hour is replayed on its own timeline with `--load-scale` times its load (jittered
copies, so its variation over the hour stays) on a Splitwise-HH cluster (H100 prefill and decode
pools, Llama2-70B). Both autoscalers read what the operator reads on a cluster: the samples each
ready machine and the router expose, scraped every 15 s (`tandem.sim.telemetry`,
`tandem.policy.pool_load`). The comparison is fair by construction:

- every autoscaled policy starts from the minimum size (1 prefill + 1 decode machine) at the
  start of the hour; each policy is measured on the second half of the hour (GPU-hours spent in
  it, SLOs of the requests arriving in it), after the first half as its warm-up;
- each autoscaler's one setting (the phase policy's prefill headroom `prefill_capacity_fraction`,
  the HPA-like policy's utilisation target) is chosen on the first half (seed 0: measured from
  minute 10, from the minimum size at minute 0), never on the reported half, which is reported
  for three other seeds;
- the HPA-like policy (`UtilizationAutoscaler`) gets the same latency signals as the phase policy
  (the router's TTFT and inter-token P90, as a second HPA metric against the SLO);
- the static baselines are measured on the same part (after a 10-minute warm-up: a static
  cluster's only state is its queues): the smallest static cluster meeting every SLO there, found
  in hindsight (the oracle), and a static cluster at the largest sizes the phase policy reached
  there (provisioned for the peak by the policy's own capacity model).

    .venv/bin/python benchmarks/simulate_autoscaling.py           # the hour, 8x the load
    .venv/bin/python benchmarks/simulate_autoscaling.py --quick   # first 10 minutes, 2x the load
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import pathlib
import resource
import statistics
import sys
import time
from dataclasses import dataclass

from tandem.sim.config import AutoscaleMode, Design, SimConfig
from tandem.sim.hardware import shared_data_dir
from tandem.sim.metrics import window_summary
from tandem.sim.pools import perf_for
from tandem.sim.simulate import simulate
from tandem.sim.traces import Trace, amplify, load_trace, window

TUNING_SEED, REPORT_SEEDS = 0, (1, 2, 3)


@dataclass(slots=True, frozen=True)
class Part:
    """A measured part of the trace and the warm-up before it (seconds of the trace's timeline)."""

    name: str
    warm_up_s: float
    start_s: float
    end_s: float


@dataclass(slots=True, frozen=True)
class Plan:
    """What one invocation runs."""

    load_scale: int
    tune: Part
    report: Part          # the autoscaled runs'; static runs warm up `static_warm_up_s` only
    static_warm_up_s: float
    phase_headrooms: tuple[float, ...]
    utilization_targets: tuple[float, ...]
    provision_delay_s: float
    max_machines: int


def replay(plan: Plan, trace: Trace, part: Part, mode: AutoscaleMode, sizes: tuple[int, int],
           **settings) -> dict:
    """One run over the part's warm-up and measured span; the measured span's figures."""
    span = window(trace, part.warm_up_s, part.end_s - part.warm_up_s)
    config = SimConfig(design=Design.SPLITWISE, prefill_gpu="H100", decode_gpu="H100",
                       num_prefill=sizes[0], num_decode=sizes[1], autoscale=mode,
                       autoscale_interval_s=15.0, provision_delay_s=plan.provision_delay_s,
                       min_machines=1, max_machines=plan.max_machines, **settings)
    result, _ = simulate(config, span)
    start, end = part.start_s - part.warm_up_s, part.end_s - part.warm_up_s
    measured = window_summary(result, perf_for(config, config.reference_gpu), start, end)
    inside = [p for p in result.replica_timeline if start <= p["time_s"] < end]
    return {
        "sizes": list(sizes), "settings": settings,
        "peak_machines": {pool: max((p["desired"] for p in inside if p["pool"] == pool),
                                    default=0) for pool in ("prefill", "decode")},
        "mean_machines": {pool: round(statistics.mean(
            [p["desired"] for p in inside if p["pool"] == pool] or [0]), 2)
            for pool in ("prefill", "decode")},
        "gpu_hours": round(measured["gpu_hours"], 2),
        "slo_met": measured["slo"]["is_met"],
        "slo_attainment": round(measured["slo"]["attainment"], 4),
        "slowdown_p90": {k: round(v["slowdown"]["p90"], 3)
                         for k, v in measured["slo"]["checks"].items()},
        "num_scaling_actions": sum(1 for a in result.scaling_actions if start <= a["time_s"] < end),
        "num_requests": measured["num_requests"],
    }


def tune(plan: Plan, trace: Trace, pool: concurrent.futures.Executor) -> dict:
    """Each autoscaler's setting, chosen on the tuning part: the cheapest that meets every SLO
    there, else the one with the highest attainment."""
    choices = {}
    for mode, name, grid in ((AutoscaleMode.PHASE, "prefill_capacity_fraction", plan.phase_headrooms),
                             (AutoscaleMode.UTILIZATION, "utilization_target",
                              plan.utilization_targets)):
        runs = [pool.submit(replay, plan, trace, plan.tune, mode, (1, 1), **{name: value})
                for value in grid]
        tried = [run.result() for run in runs]
        met = [row for row in tried if row["slo_met"]]
        best = (min(met, key=lambda row: row["gpu_hours"]) if met
                else max(tried, key=lambda row: row["slo_attainment"]))
        choices[mode.value] = {"setting": best["settings"], "tried": tried}
    return choices


def static_oracle(plan: Plan, trace: Trace, guess: tuple[int, int],
                  known: dict[tuple[int, int], dict]) -> tuple[int, int]:
    """The smallest static (prefill, decode) sizes meeting every SLO on the reported part, in
    hindsight: from `guess` (grown one machine per pool until it meets them), the smallest prefill
    pool beside its decode pool, then the smallest decode pool beside that (more machines never
    hurt). A guess near the answer (the phase policy's mean sizes) takes a few runs."""

    def ok(sizes: tuple[int, int]) -> bool:
        if sizes not in known:
            known[sizes] = static_run(plan, trace, sizes)
        return known[sizes]["slo_met"]

    prefill, decode = guess
    while not ok((prefill, decode)):
        prefill, decode = prefill + 1, decode + 1
    prefill = _smallest(lambda n: ok((n, decode)), prefill)
    return prefill, _smallest(lambda n: ok((prefill, n)), decode)


def static_run(plan: Plan, trace: Trace, sizes: tuple[int, int]) -> dict:
    """A static cluster on the reported part."""
    part = Part("report", plan.report.start_s - plan.static_warm_up_s, plan.report.start_s,
                plan.report.end_s)
    return replay(plan, trace, part, AutoscaleMode.STATIC, sizes)


def _smallest(is_enough, high: int) -> int:
    # The smallest n in [1, high] with is_enough(n), given is_enough(high) and monotonicity,
    # stepping down from `high` (a guess near the answer).
    while high > 1 and is_enough(high - 1):
        high -= 1
    return high


def compare(plan: Plan, base: Trace, choices: dict, seed: int) -> dict:
    """The four policies on the reported part of one seed's trace."""
    trace = amplify(base, plan.load_scale, seed=seed)
    phase = replay(plan, trace, plan.report, AutoscaleMode.PHASE, (1, 1),
                   **choices["phase"]["setting"])
    hpa = replay(plan, trace, plan.report, AutoscaleMode.UTILIZATION, (1, 1),
                 **choices["utilization"]["setting"])
    peak = (phase["peak_machines"]["prefill"], phase["peak_machines"]["decode"])
    known = {peak: static_run(plan, trace, peak)}
    mean = phase["mean_machines"]
    oracle = static_oracle(plan, trace, (max(1, round(mean["prefill"])),
                                         max(1, round(mean["decode"]))), known)
    rows = {"static-oracle": known[oracle], "static-at-phase-peak": known[peak],
            "hpa-like": hpa, "phase": phase}
    for row in rows.values():
        row["gpu_hours_vs_oracle"] = round(row["gpu_hours"] / known[oracle]["gpu_hours"], 3)
        row["gpu_hours_vs_peak"] = round(row["gpu_hours"] / known[peak]["gpu_hours"], 3)
    return {"seed": seed, "policies": [{"policy": name, **row} for name, row in rows.items()]}


def plan_for(args: argparse.Namespace, trace_end_s: float) -> Plan:
    """The parts and grids of a full or a quick run."""
    if args.quick:
        return Plan(2, Part("tune", 0.0, 100.0, 300.0), Part("report", 0.0, 300.0, 600.0), 100.0,
                    (0.8, 1.0), (0.5, 0.7), args.provision_delay, 16)
    half = trace_end_s / 2
    return Plan(args.load_scale, Part("tune", 0.0, 600.0, half), Part("report", 0.0, half, trace_end_s),
                600.0, (0.6, 0.7, 0.8, 0.9, 1.0), (0.3, 0.5, 0.7, 0.9), args.provision_delay, 40)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="first 10 minutes, 2x the load")
    parser.add_argument("--load-scale", type=int, default=8, help="K times the load, same timeline")
    parser.add_argument("--provision-delay", type=float, default=120.0)
    parser.add_argument("--trace", type=pathlib.Path,
                        default=shared_data_dir() / "traces" / "azure_llm_2023_conv.csv")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    args = parser.parse_args()
    base = load_trace(args.trace)
    plan = plan_for(args, 600.0 if args.quick else float(base.arrival_s[-1]) + 1e-6)
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        choices = tune(plan, amplify(base, plan.load_scale, seed=TUNING_SEED), pool)
        seeds = list(pool.map(functools.partial(compare, plan, base, choices), REPORT_SEEDS))
    cpu_s = time.process_time() + _children_cpu_s()
    result = {
        "benchmark": "simulate_autoscaling",
        "parameters": {"trace": str(args.trace), "load_scale": plan.load_scale,
                       "tune": _part(plan.tune),
                       "report": _part(plan.report),
                       "static_warm_up_s": plan.static_warm_up_s, "tuning_seed": TUNING_SEED,
                       "report_seeds": list(REPORT_SEEDS),
                       "design": "Splitwise-HH (H100 prefill, H100 decode)",
                       "start_machines": {"prefill": 1, "decode": 1},
                       "provision_delay_s": plan.provision_delay_s, "interval_s": 15.0,
                       "scale_down_stabilization_s": 300.0, "max_machines": plan.max_machines,
                       "signals": "scraped per tick: worker gauges and counters, router TTFT/ITL "
                                  "histograms", "quick": args.quick},
        "tuning": {policy: {"chosen": choice["setting"],
                            "tried": [{**row["settings"], "gpu_hours": row["gpu_hours"],
                                       "slo_met": row["slo_met"],
                                       "slo_attainment": row["slo_attainment"]}
                                      for row in choice["tried"]]}
                   for policy, choice in choices.items()},
        "seeds": seeds,
        "mean_over_seeds": _means(seeds),
        "wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(cpu_s, 1),
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _part(part: Part) -> dict:
    return {"warm_up_from_s": part.warm_up_s, "measured_from_s": part.start_s,
            "measured_to_s": round(part.end_s, 1)}


def _means(seeds: list[dict]) -> list[dict]:
    # Per policy: the mean of each ratio and figure over the seeds, and how many met every SLO.
    names = [row["policy"] for row in seeds[0]["policies"]]
    rows = []
    for name in names:
        runs = [next(r for r in seed["policies"] if r["policy"] == name) for seed in seeds]
        rows.append({"policy": name, "slo_met": sum(r["slo_met"] for r in runs),
                     **{key: round(statistics.mean(r[key] for r in runs), 3)
                        for key in ("gpu_hours", "gpu_hours_vs_oracle", "gpu_hours_vs_peak",
                                    "slo_attainment", "num_scaling_actions")}})
    return rows


if __name__ == "__main__":
    sys.exit(main())
