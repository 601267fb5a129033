"""One call that runs a configuration on a trace and returns the raw result and its summary."""

from __future__ import annotations

import numpy as np

from tandem.sim.config import SimConfig
from tandem.sim.engine import SimResult, Simulator
from tandem.sim.metrics import summary, unloaded
from tandem.sim.pools import perf_for
from tandem.sim.traces import Trace


def simulate(config: SimConfig, trace: Trace) -> tuple[SimResult, dict]:
    """Simulates `trace` on the cluster of `config`; returns (raw result, JSON-ready summary)."""
    if len(trace) == 0:
        raise ValueError("cannot simulate an empty trace")
    reference = perf_for(config, config.reference_gpu)
    sim = Simulator(config)
    # The autoscalers' absolute SLOs: the P90 slowdown limits applied to an unloaded reference
    # machine serving the trace's P90 prompt (TTFT) and its mean context (time between tokens).
    prompt, output = trace.prompt_tokens, trace.output_tokens
    p90_prompt = np.array([np.percentile(prompt, 90)])
    ttft_ref, _, _ = unloaded(reference, p90_prompt, np.array([2]))
    mean_context = float(prompt.mean() + output.mean() / 2)
    decode_ref = reference.decode_time(1, mean_context)
    sim.scaling.configure(decode_ref, float(ttft_ref[0]), float(prompt.mean()), mean_context)
    result = sim.run(trace)
    return result, summary(result, reference)
