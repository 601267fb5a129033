"""One call that runs a configuration on a trace and returns the raw result and its summary."""

from __future__ import annotations

from tandem.sim.config import SimConfig
from tandem.sim.engine import SimResult, Simulator
from tandem.sim.metrics import summary
from tandem.sim.pools import perf_for
from tandem.sim.scaling import slo_targets
from tandem.sim.traces import Trace


def simulate(config: SimConfig, trace: Trace) -> tuple[SimResult, dict]:
    """Simulates `trace` on the cluster of `config`; returns (raw result, JSON-ready summary)."""
    if len(trace) == 0:
        raise ValueError("cannot simulate an empty trace")
    reference = perf_for(config, config.reference_gpu)
    sim = Simulator(config)
    # The autoscalers get the slowdown SLOs as absolute targets for this trace's request sizes.
    sim.scaling.configure(slo_targets(config, trace, reference))
    result = sim.run(trace)
    return result, summary(result, reference)
