"""Reproduce Splitwise's cluster comparison in the simulator, then try Tandem's routing on it.

Llama2-70B, Poisson arrivals with prompt/output sizes drawn from the Azure conversation trace (as
the Splitwise simulator does), SLOs as slowdowns against an unloaded DGX-A100 (TTFT P50/P90/P99
2x/3x/6x; TBT and E2E 1.25x/1.5x/5x). For each design and budget the script searches the
prefill/decode split and the highest arrival rate that meets every SLO, and prints one JSON object.

Budgets are those of the paper: the cost of `--num-h100` DGX-H100 machines (iso-cost) and their
provisioned power (iso-power); "cost-optimised" gives Splitwise-HA 80% of the iso-cost budget.

    .venv/bin/python benchmarks/simulate_splitwise.py            # 40 H100 budget, 2-minute traces
    .venv/bin/python benchmarks/simulate_splitwise.py --quick    # 8 H100 budget, 30-second traces
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
from dataclasses import dataclass

from tandem.sim.config import Design, SimConfig
from tandem.sim.hardware import gpu_type, shared_data_dir
from tandem.sim.pools import perf_for
from tandem.sim.search import best_split, max_rate_within_slo
from tandem.sim.simulate import simulate
from tandem.sim.traces import load_trace, poisson

PAPER = {"splitwise_ha_throughput_at_80pct_cost": 1.4, "best_throughput_same_cost_and_power": 2.35}


@dataclass(frozen=True)
class DesignSpec:
    """One cluster design of the comparison."""

    name: str
    design: Design
    prefill_gpu: str
    decode_gpu: str


COLOCATED_H100 = DesignSpec("Baseline-H100", Design.COLOCATED, "H100", "H100")
COLOCATED_A100 = DesignSpec("Baseline-A100", Design.COLOCATED, "A100", "A100")
SPLITWISE_HH = DesignSpec("Splitwise-HH", Design.SPLITWISE, "H100", "H100")
SPLITWISE_HA = DesignSpec("Splitwise-HA", Design.SPLITWISE, "H100", "A100")
SPLITWISE_HHCAP = DesignSpec("Splitwise-HHcap", Design.SPLITWISE, "H100", "H100-capped")
TANDEM_HH = DesignSpec("Tandem-HH", Design.TANDEM, "H100", "H100")
TANDEM_HA = DesignSpec("Tandem-HA", Design.TANDEM, "H100", "A100")


class Experiment:
    """Runs the searches and counts the simulated requests."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = load_trace(args.trace)
        self.num_simulated = 0
        self.tp = 8

    def machine_price(self, gpu: str, kind: str) -> float:
        """One machine's share of a budget: cost per hour, or provisioned kW."""
        spec = gpu_type(gpu)
        return spec.cost_per_hour if kind == "cost" else spec.tdp_watts * self.tp / 1e3

    def budget(self, kind: str, fraction: float = 1.0) -> float:
        """The budget of `--num-h100` H100 machines."""
        return fraction * self.args.num_h100 * self.machine_price("H100", kind)

    def config(self, spec: DesignSpec, num_prefill: int, num_decode: int) -> SimConfig:
        """The simulated cluster of a design."""
        if spec.design is Design.COLOCATED:
            return SimConfig(design=spec.design, gpu=spec.prefill_gpu, num_machines=num_decode)
        return SimConfig(design=spec.design, prefill_gpu=spec.prefill_gpu,
                         decode_gpu=spec.decode_gpu, num_prefill=num_prefill, num_decode=num_decode)

    def is_met(self, config: SimConfig, rate: float) -> bool:
        """Whether the cluster meets every SLO at `rate` requests/s."""
        num = max(50, int(rate * self.args.duration))
        trace = poisson(self.base, rate, num, seed=self.args.seed)
        self.num_simulated += num
        return simulate(config, trace)[1]["slo"]["is_met"]

    def capacity_guess(self, spec: DesignSpec, num_prefill: int, num_decode: int) -> float:
        """A rough sustainable rate to start the search from: the slower phase's capacity."""
        prompt = float(self.base.prompt_tokens.mean())
        output = float(self.base.output_tokens.mean())
        cfg = SimConfig()
        prefill = perf_for(cfg, spec.prefill_gpu)
        prefill_rps = 2048 / prefill.prefill_time(2048) / prompt
        decode = perf_for(cfg, spec.decode_gpu)
        limit = 1.25 * perf_for(cfg, "A100").decode_time(1, prompt + output / 2)
        batch = 1
        while decode.decode_time(batch + 1, (batch + 1) * (prompt + output / 2)) <= limit:
            batch += 1
        decode_rps = batch / decode.decode_time(batch, batch * (prompt + output / 2)) / output
        if spec.design is Design.COLOCATED:
            return 0.6 * num_decode / (1 / prefill_rps + 1 / decode_rps)
        return 0.8 * min(num_prefill * prefill_rps, num_decode * decode_rps)

    def max_rate(self, spec: DesignSpec, num_prefill: int, num_decode: int,
                 guess: float | None = None) -> tuple[float, int]:
        """The highest rate the cluster sustains within the SLOs, and the probes it took."""
        config = self.config(spec, num_prefill, num_decode)
        start = guess or self.capacity_guess(spec, num_prefill, num_decode)
        found = max_rate_within_slo(lambda rate: self.is_met(config, rate), max(start, 0.5),
                                    rel_tol=self.args.rel_tol)
        return found.best_rate, len(found.probes)

    def evaluate(self, spec: DesignSpec, kind: str, fraction: float = 1.0) -> dict:
        """The best split of `spec` under a budget, and the rate it sustains."""
        budget = self.budget(kind, fraction)
        price = {gpu: self.machine_price(gpu, kind) for gpu in (spec.prefill_gpu, spec.decode_gpu)}
        if spec.design is Design.COLOCATED:
            num = int(budget / price[spec.prefill_gpu] + 1e-9)
            rate, probes = self.max_rate(spec, 0, num)
            return self._row(spec, 0, num, rate, probes, {})

        def decode_for(num_prefill: int) -> int:
            # Floor with a tolerance: 8 x 4.76 - 3 x 4.76 must buy 5 machines, not 4.999...
            return int((budget - num_prefill * price[spec.prefill_gpu]) / price[spec.decode_gpu] + 1e-9)

        high = max(n for n in range(1, 10_000) if decode_for(n) >= 1 or n == 1)
        start = max(range(1, high + 1), key=lambda n: self.capacity_guess(spec, n, decode_for(n)))
        probes = 0

        def rate_for(num_prefill: int, guess: float) -> float:
            nonlocal probes
            rate, used = self.max_rate(spec, num_prefill, decode_for(num_prefill), guess)
            probes += used
            return rate

        split = best_split(rate_for, start, 1, high, self.capacity_guess(spec, start, decode_for(start)))
        return self._row(spec, split.best_num_prefill, decode_for(split.best_num_prefill),
                         split.best_rate, probes, split.rate_by_num_prefill)

    def _row(self, spec, num_prefill, num_decode, rate, probes, by_split) -> dict:
        machines = {}
        if num_prefill:
            machines[spec.prefill_gpu] = num_prefill
        machines[spec.decode_gpu] = machines.get(spec.decode_gpu, 0) + num_decode
        return {"design": spec.name, "prefill_machines": num_prefill, "decode_machines": num_decode,
                "machines": machines,
                "cost_per_hour": round(sum(self.machine_price(g, "cost") * n for g, n in machines.items()), 2),
                "power_kw": round(sum(self.machine_price(g, "power") * n for g, n in machines.items()), 1),
                "max_rate_rps": round(rate, 2), "num_probes": probes,
                "rate_by_num_prefill": {str(k): round(v, 2) for k, v in by_split.items()}}


def _compare(rows: list[dict], baseline: str) -> dict:
    base = next(r for r in rows if r["design"] == baseline)["max_rate_rps"]
    return {r["design"]: round(r["max_rate_rps"] / base, 3) if base else None for r in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budget, short traces")
    parser.add_argument("--num-h100", type=int, help="budget in DGX-H100 machines (default 40)")
    parser.add_argument("--duration", type=float, help="seconds of arrivals per probe (default 120)")
    parser.add_argument("--rel-tol", type=float, default=0.04, help="rate search precision")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trace", type=pathlib.Path,
                        default=shared_data_dir() / "traces" / "azure_llm_2023_conv.csv")
    parser.add_argument("--plot", type=pathlib.Path, help="write throughput_vs_cost.png here")
    args = parser.parse_args()
    args.num_h100 = args.num_h100 or (8 if args.quick else 40)
    args.duration = args.duration or (30.0 if args.quick else 120.0)
    if args.quick:
        args.rel_tol = max(args.rel_tol, 0.1)
    exp = Experiment(args)
    started, cpu_started = time.perf_counter(), time.process_time()
    iso_cost = [exp.evaluate(s, "cost") for s in
                (COLOCATED_H100, COLOCATED_A100, SPLITWISE_HH, SPLITWISE_HA, TANDEM_HH, TANDEM_HA)]
    hh = next(r for r in iso_cost if r["design"] == "Splitwise-HH")
    iso_power = [iso_cost[0]] + [exp.evaluate(s, "power") for s in
                                 (COLOCATED_A100, SPLITWISE_HA, SPLITWISE_HHCAP, TANDEM_HA)] + [hh]
    cheaper = [exp.evaluate(s, "cost", 0.8) for s in (SPLITWISE_HA, TANDEM_HA)]
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    base_rate = iso_cost[0]["max_rate_rps"]
    result = {
        "benchmark": "simulate_splitwise",
        "parameters": {"model": "llama2-70b", "trace": str(args.trace), "num_h100_budget": args.num_h100,
                       "cost_budget_per_hour": exp.budget("cost"), "power_budget_kw": exp.budget("power"),
                       "probe_duration_s": args.duration, "rel_tol": args.rel_tol, "seed": args.seed,
                       "slo_reference": "unloaded DGX-A100", "quick": args.quick},
        "iso_cost": {"designs": iso_cost, "throughput_vs_baseline_h100": _compare(iso_cost, "Baseline-H100")},
        "iso_power": {"designs": iso_power, "throughput_vs_baseline_h100": _compare(iso_power, "Baseline-H100")},
        "cost_optimized_80pct": {"designs": cheaper, "throughput_vs_baseline_h100":
                                 {r["design"]: round(r["max_rate_rps"] / base_rate, 3) if base_rate else None
                                  for r in cheaper}},
        "paper": PAPER,
        "simulated_requests": exp.num_simulated, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "simulated_requests_per_wall_s": round(exp.num_simulated / wall),
        "simulated_requests_per_cpu_s": round(exp.num_simulated / cpu),
    }
    if args.plot:
        from tandem.sim.plots import plot_throughput_vs_cost

        points = [{"label": f"{r['design']} ({r['prefill_machines']}P/{r['decode_machines']}D)",
                   "cost_per_hour": r["cost_per_hour"], "throughput_rps": r["max_rate_rps"]}
                  for r in iso_cost + iso_power[1:-1] + cheaper]
        plot_throughput_vs_cost(points, args.plot, "max rate within the Splitwise SLOs")
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
