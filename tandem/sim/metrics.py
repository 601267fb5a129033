"""Per-request latencies, slowdowns against an unloaded machine, SLO checks and the run summary."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tandem.sim.engine import SimResult
from tandem.sim.perf_model import PerfModel, Piecewise

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class Latencies:
    """Per-request seconds (TBT is NaN for single-token answers) and their unloaded references."""

    ttft: np.ndarray
    tbt: np.ndarray
    e2e: np.ndarray
    ttft_ref: np.ndarray
    tbt_ref: np.ndarray
    e2e_ref: np.ndarray


def _vector(fn: Piecewise, x: np.ndarray) -> np.ndarray:
    xs, ys = np.asarray(fn.xs), np.asarray(fn.ys)
    y = np.interp(x, xs, ys)
    if fn.is_extrapolated:
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        y = np.where(x > xs[-1], ys[-1] + slope * (x - xs[-1]), y)
    return y


def unloaded(perf: PerfModel, prompt: np.ndarray, output: np.ndarray):
    """TTFT, mean TBT and E2E of each request alone on an idle machine of this perf model."""
    ttft = _vector(perf.prefill, prompt.astype(np.float64))
    # Decode time is linear in context, so the mean over the answer is the time at its middle.
    mid_context = prompt + 1 + np.maximum(output - 2, 0) / 2.0
    tbt = _vector(perf.decode_by_batch, np.ones(len(prompt))) + perf.context_slope_s * (mid_context - 512)
    e2e = ttft + (output - 1) * tbt
    return ttft, tbt, e2e


def latencies(result: SimResult, reference: PerfModel) -> Latencies:
    """Observed and reference latencies of every request of a finished run."""
    reqs, trace = result.requests, result.trace
    arrival = trace.arrival_s
    first = np.asarray(reqs.first_token_s)
    finish = np.asarray(reqs.finish_s)
    output = trace.output_tokens
    with np.errstate(invalid="ignore", divide="ignore"):
        tbt = np.where(output > 1, (finish - first) / (output - 1), np.nan)
    ttft_ref, tbt_ref, e2e_ref = unloaded(reference, trace.prompt_tokens, output)
    return Latencies(first - arrival, tbt, finish - arrival, ttft_ref,
                     np.where(output > 1, tbt_ref, np.nan), e2e_ref)


def percentiles(values: np.ndarray) -> dict[str, float]:
    """P50/P90/P99 of the finite values."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {f"p{p}": float("nan") for p in PERCENTILES}
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(finite, PERCENTILES))}


def slo_report(lat: Latencies, slo) -> dict:
    """Slowdown percentiles against the SLO limits, whether all are met, and per-request attainment."""
    checks, is_met = {}, True
    for name, limits in (("ttft", slo.ttft), ("tbt", slo.tbt), ("e2e", slo.e2e)):
        observed, ref = getattr(lat, name), getattr(lat, f"{name}_ref")
        slowdown = percentiles(observed / ref)
        ok = {f"p{p}": bool(slowdown[f"p{p}"] <= limit) for p, limit in zip(PERCENTILES, limits)}
        ok = {k: bool(v or np.isnan(slowdown[k])) for k, v in ok.items()}
        checks[name] = {"slowdown": slowdown, "limit": dict(zip(ok, limits)), "met": ok}
        is_met &= all(ok.values())
    # A request attains the SLO when each of its slowdowns is within the P90 limits.
    within = (lat.ttft / lat.ttft_ref <= slo.ttft[1]) & (lat.e2e / lat.e2e_ref <= slo.e2e[1])
    tbt_ok = np.where(np.isnan(lat.tbt), True, lat.tbt / np.where(np.isnan(lat.tbt_ref), 1, lat.tbt_ref)
                      <= slo.tbt[1])
    return {"is_met": bool(is_met), "checks": checks,
            "attainment": float(np.mean(within & tbt_ok)) if len(within) else 0.0}


def summary(result: SimResult, reference: PerfModel) -> dict:
    """The JSON summary of a run."""
    cfg, trace = result.config, result.trace
    lat = latencies(result, reference)
    machine_hours = {}
    cost = energy_j = 0.0
    for m in result.machines:
        hours = (m.retired_s - m.started_s) / 3600.0
        machine_hours[m.gpu.name] = machine_hours.get(m.gpu.name, 0.0) + hours
        cost += hours * m.gpu.cost_per_gpu_hour * m.num_gpus
        life_s = m.retired_s - m.started_s
        energy_j += m.energy_j + life_s * cfg.idle_power_fraction * m.gpu.tdp_watts * m.num_gpus
    span = max(result.end_s - float(trace.arrival_s[0]), 1e-9)
    num_tokens = int(trace.output_tokens.sum())
    routing = result.routing
    return json_ready({
        "design": cfg.design.value, "model": cfg.model, "autoscale": cfg.autoscale.value,
        "pools": [{"name": p.name, "gpu": p.gpu.name, "initial_machines": _initial(result, p.name),
                   "final_machines": p.desired} for p in result.pools],
        "num_requests": len(trace), "simulated_s": result.end_s,
        "throughput": {"requests_per_s": len(trace) / span, "output_tokens_per_s": num_tokens / span,
                       "offered_requests_per_s": _offered_rate(trace)},
        "ttft_s": percentiles(lat.ttft), "tbt_s": percentiles(lat.tbt), "e2e_s": percentiles(lat.e2e),
        "slo": slo_report(lat, cfg.slo), "slo_reference_gpu": cfg.reference_gpu,
        "gpu_hours": sum(h * cfg.tensor_parallel for h in machine_hours.values()),
        "machine_hours": machine_hours, "cost": cost, "energy_kwh": energy_j / 3.6e6,
        "provisioned_power_kw": sum(p.gpu.tdp_watts * cfg.tensor_parallel * _initial(result, p.name)
                                    for p in result.pools) / 1e3,
        "power_fractions_from": sorted({p.perf.power_source for p in result.pools}),
        "routing": {"disaggregated": routing.num_disaggregated,
                    "prefilled_on_decode_machine": routing.num_local_prefill,
                    "prefix_locality_choices": routing.num_locality_choices,
                    "cached_prompt_tokens": routing.num_cached_prompt_tokens},
        "scaling": {"num_actions": len(result.scaling_actions), "actions": result.scaling_actions},
    })


def window_summary(result: SimResult, reference: PerfModel, start_s: float, end_s: float) -> dict:
    """GPU-hours spent in [start_s, end_s) and the latencies and SLO report of the requests that
    arrive in it: a run measured after a warm-up, or one part of a longer replay."""
    lat = latencies(result, reference)
    arrival = result.trace.arrival_s
    mask = (arrival >= start_s) & (arrival < end_s)
    inside = Latencies(*(getattr(lat, name)[mask] for name in Latencies.__dataclass_fields__))
    gpu_seconds = sum(max(0.0, min(m.retired_s, end_s) - max(m.started_s, start_s)) * m.num_gpus
                      for m in result.machines)
    return json_ready({
        "num_requests": int(mask.sum()), "gpu_hours": gpu_seconds / 3600.0,
        "ttft_s": percentiles(inside.ttft), "tbt_s": percentiles(inside.tbt),
        "e2e_s": percentiles(inside.e2e), "slo": slo_report(inside, result.config.slo),
    })


def json_ready(value):
    """Plain Python values for json.dumps: numpy scalars unwrapped, NaN and inf as None."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _initial(result: SimResult, pool_name: str) -> int:
    return sum(1 for m in result.machines if m.pool == pool_name and m.started_s == 0.0)


def _offered_rate(trace) -> float:
    return len(trace) / trace.duration_s if trace.duration_s > 0 else float("nan")
