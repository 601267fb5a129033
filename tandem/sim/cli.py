"""`tandem simulate`: replay a request trace on a simulated cluster and report latency, SLOs and cost."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import numpy as np

from tandem.sim.config import AutoscaleMode, Design, SimConfig, default_worker_choice
from tandem.sim.hardware import GPU_TYPES, default_perf_csv
from tandem.sim.perf_model import DecodeTiming
from tandem.sim.traces import (Trace, TraceFormat, amplify, load_trace, poisson, scale_rate,
                               spread_ties, window)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares the command's options."""
    gpus = ", ".join(GPU_TYPES)
    work = parser.add_argument_group("workload")
    work.add_argument("--trace", required=True, type=pathlib.Path, help="Azure CSV or Mooncake JSONL")
    work.add_argument("--format", choices=[f.value for f in TraceFormat], help="default: detected")
    work.add_argument("--spread-ties", action="store_true",
                      help="spread requests sharing a timestamp until the next one (the Mooncake "
                           "trace stamps ~10 requests at once every few seconds)")
    work.add_argument("--rate-scale", type=float, default=1.0, help="replay at K times the rate")
    work.add_argument("--load-scale", type=int, default=1,
                      help="K jittered copies on the trace's own timeline (K times the load, "
                           "same variation over time)")
    work.add_argument("--start", type=float, default=0.0, help="window start (s into the trace)")
    work.add_argument("--duration", type=float, help="window length (s); default: to the end")
    work.add_argument("--poisson-rate", type=float,
                      help="instead of the trace's times: Poisson arrivals at this rate (req/s) "
                           "with sizes drawn from the trace")
    work.add_argument("--num-requests", type=int, default=10_000, help="with --poisson-rate")
    work.add_argument("--seed", type=int, default=0)
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--design", choices=[d.value for d in Design], default="colocated")
    cluster.add_argument("--gpu", default="H100", help=f"colocated machine type ({gpus})")
    cluster.add_argument("--machines", type=int, default=4, help="colocated machines")
    cluster.add_argument("--prefill-gpu", default="H100")
    cluster.add_argument("--decode-gpu", default="H100")
    cluster.add_argument("--prefill", type=int, default=2, help="prefill machines")
    cluster.add_argument("--decode", type=int, default=2, help="decode machines")
    cluster.add_argument("--model", default="llama2-70b")
    cluster.add_argument("--tensor-parallel", type=int, default=8, help="GPUs per machine")
    cluster.add_argument("--max-batch-size", type=int, default=512)
    cluster.add_argument("--max-batch-tokens", type=int, default=2048)
    cluster.add_argument("--link-bandwidth", type=float, default=200.0, help="GB/s per prefill machine")
    cluster.add_argument("--link-latency", type=float, default=1e-4, help="seconds")
    cluster.add_argument("--kv-overlap", type=float, default=0.9)
    cluster.add_argument("--min-disaggregate-tokens", type=int,
                         help="uncached prompts shorter than this prefill on the decode machine")
    cluster.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction,
                         help="reuse cached prompt blocks (Mooncake hash_ids) and route by them; "
                              "default: on for --design tandem only")
    scale = parser.add_argument_group("autoscaling")
    scale.add_argument("--autoscale", choices=[m.value for m in AutoscaleMode], default="static")
    scale.add_argument("--autoscale-interval", type=float, default=15.0)
    scale.add_argument("--provision-delay", type=float, default=120.0)
    scale.add_argument("--min-machines", type=int, default=1)
    scale.add_argument("--max-machines", type=int, default=64)
    scale.add_argument("--utilization-target", type=float, default=0.7,
                       help="utilisation policy: target busy share of each pool")
    scale.add_argument("--prefill-capacity-fraction", type=float, default=0.8,
                       help="phase policy: share of a prefill machine's peak throughput to plan on")
    costs = parser.add_argument_group("SLOs, cost and power")
    costs.add_argument("--slo-reference-gpu", default="A100",
                       help="slowdowns are against this machine type, unloaded")
    costs.add_argument("--gpu-cost", action="append", default=[], metavar="GPU=COST",
                       help="dollars per GPU-hour, e.g. H100=4.76 (repeatable; defaults: "
                            "A100 2.21, H100 4.76, H100-capped 4.76)")
    costs.add_argument("--idle-power-fraction", type=float, default=0.2)
    costs.add_argument("--perf-csv", type=pathlib.Path, default=default_perf_csv())
    costs.add_argument("--decode-timing", choices=[t.value for t in DecodeTiming],
                       default=DecodeTiming.BATCH_SWEEP.value,
                       help="decode iteration times: over the measured batch sweep (default) or "
                            "as the Splitwise simulator reads them (nearly flat in batch size)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the JSON summary only")
    out.add_argument("--out", type=pathlib.Path, help="write summary.json, requests.csv and PNGs here")


def build_trace(args: argparse.Namespace) -> Trace:
    """The workload the options describe."""
    trace = load_trace(args.trace, args.format)
    if args.spread_ties:
        trace = spread_ties(trace)
    if args.start or args.duration is not None:
        trace = window(trace, args.start, args.duration)
    if args.poisson_rate is not None:
        trace = poisson(trace, args.poisson_rate, args.num_requests, args.seed)
    if args.load_scale != 1:
        trace = amplify(trace, args.load_scale, args.seed)
    if args.rate_scale != 1.0:
        trace = scale_rate(trace, args.rate_scale)
    return trace


def build_config(args: argparse.Namespace) -> SimConfig:
    """The cluster the options describe."""
    choice = default_worker_choice(Design(args.design))
    if args.min_disaggregate_tokens is not None:
        choice = dataclasses.replace(choice, min_disaggregate_prompt_tokens=args.min_disaggregate_tokens)
    return SimConfig(
        design=Design(args.design), model=args.model, tensor_parallel=args.tensor_parallel,
        gpu=args.gpu, num_machines=args.machines, prefill_gpu=args.prefill_gpu,
        decode_gpu=args.decode_gpu, num_prefill=args.prefill, num_decode=args.decode,
        max_batch_size=args.max_batch_size, max_batch_tokens=args.max_batch_tokens,
        link_bandwidth_gb_s=args.link_bandwidth, link_latency_s=args.link_latency,
        kv_overlap=args.kv_overlap, worker_choice=choice, prefix_caching=args.prefix_caching,
        autoscale=AutoscaleMode(args.autoscale),
        autoscale_interval_s=args.autoscale_interval, provision_delay_s=args.provision_delay,
        min_machines=args.min_machines, max_machines=args.max_machines,
        utilization_target=args.utilization_target,
        prefill_capacity_fraction=args.prefill_capacity_fraction, reference_gpu=args.slo_reference_gpu,
        gpu_cost_per_hour=_parse_costs(args.gpu_cost), idle_power_fraction=args.idle_power_fraction,
        perf_csv=args.perf_csv, decode_timing=DecodeTiming(args.decode_timing))


def run(args: argparse.Namespace) -> int:
    """Runs the simulation and prints or writes its results."""
    from tandem.sim.simulate import simulate

    try:
        trace = build_trace(args)
        config = build_config(args)
        result, summary = simulate(config, trace)
    except ValueError as exc:
        print(f"tandem simulate: {exc}", file=sys.stderr)
        return 2
    summary["trace"] = {"path": str(args.trace), "num_requests": len(trace),
                        "rate_scale": args.rate_scale, "load_scale": args.load_scale,
                        "poisson_rate": args.poisson_rate, "spread_ties": args.spread_ties,
                        "start_s": args.start, "duration_s": args.duration, "seed": args.seed}
    if args.out is not None:
        write_outputs(result, summary, args.out)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_human(summary, args.out))
    return 0


def write_outputs(result, summary: dict, out_dir: pathlib.Path) -> None:
    """summary.json, requests.csv and the three plots."""
    from tandem.sim import plots
    from tandem.sim.metrics import latencies
    from tandem.sim.pools import perf_for

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    lat = latencies(result, perf_for(result.config, result.config.reference_gpu))
    trace = result.trace
    table = np.column_stack([trace.arrival_s, trace.prompt_tokens, trace.output_tokens,
                             lat.ttft, lat.tbt, lat.e2e])
    np.savetxt(out_dir / "requests.csv", table, delimiter=",", fmt="%.6f",
               header="arrival_s,prompt_tokens,output_tokens,ttft_s,tbt_s,e2e_s", comments="")
    plots.plot_latency_cdfs(lat, out_dir / "latency_cdf.png", title=summary["design"])
    plots.plot_replicas(result, out_dir / "replicas.png")
    plots.plot_throughput_vs_cost(
        [{"label": summary["design"], "cost_per_hour": summary["cost"] / max(summary["simulated_s"] / 3600, 1e-9),
          "throughput_rps": summary["throughput"]["requests_per_s"]}],
        out_dir / "throughput_vs_cost.png")


def _parse_costs(items: list[str]) -> dict[str, float]:
    costs = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            costs[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or costs.get(name, -1) < 0:
            raise ValueError(f"--gpu-cost expects GPU=COST with COST >= 0, got {item!r}")
    return costs


def _human(summary: dict, out_dir: pathlib.Path | None) -> str:
    slo = summary["slo"]
    lines = [f"design {summary['design']}  pools "
             + ", ".join(f"{p['name']} {p['initial_machines']}x{p['gpu']}" for p in summary["pools"]),
             f"requests {summary['num_requests']}  throughput "
             f"{summary['throughput']['requests_per_s']:.2f} req/s, "
             f"{summary['throughput']['output_tokens_per_s']:.0f} tok/s"]
    for name in ("ttft_s", "tbt_s", "e2e_s"):
        p = summary[name]
        lines.append(f"{name[:-2].upper():>5} P50 {p['p50']:.3f}s  P90 {p['p90']:.3f}s  P99 {p['p99']:.3f}s")
    lines.append(f"SLOs met: {slo['is_met']}  attainment {slo['attainment']:.1%}")
    lines.append(f"GPU-hours {summary['gpu_hours']:.2f}  cost {summary['cost']:.2f}  "
                 f"energy {summary['energy_kwh']:.1f} kWh  scaling actions "
                 f"{summary['scaling']['num_actions']}")
    if out_dir is not None:
        lines.append(f"wrote {out_dir}/summary.json, requests.csv, latency_cdf.png, replicas.png, "
                     f"throughput_vs_cost.png")
    return "\n".join(lines)
