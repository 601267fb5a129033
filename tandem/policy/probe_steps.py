"""The thinking budget after the prefill probe, as a step function of the probe's difficulty.

`DifficultyPolicy.refine_after_probe` says which band a request belongs to once the probe has
read the prompt's hidden state. The router turns that into steps, (min_probe_difficulty,
thinking_budget) ascending, fixed before dispatch: a decode worker that prefills a prompt itself
applies them between prefill and decode with no round trip, and the router applies the same
steps to what a prefill worker's probe reports, so both sides always agree. Pure: no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class ProbeStep:
    """From this probe difficulty up (to the next step), this thinking budget."""

    min_probe_difficulty: float
    thinking_budget: int


def probe_steps(policy, decision) -> list[ProbeStep]:
    """The refined thinking budget of `decision` for every probe difficulty in [0, 1].

    Empty when the probe cannot change it: no thinking, or a probe weight of 0. The budget of
    each interval between breakpoints is the policy's own refinement at the interval's middle.
    """
    if not decision.thinking or policy.probe_weight == 0:
        return []
    weight = policy.probe_weight
    # The refined difficulty is (1 - w) * prompt + w * probe: band edges and the middles of gaps
    # between the candidate bands are where it can move to another band.
    bands = sorted((b for b in policy.bands_for(decision.tenant_name)
                    if b.tier == decision.tier and b.thinking == decision.thinking),
                   key=lambda b: b.low)
    edges = {edge for band in bands for edge in (band.low, band.high)}
    edges |= {(left.high + right.low) / 2 for left, right in zip(bands, bands[1:])}
    breaks = sorted({0.0} | {p for e in edges
                             if 0.0 < (p := (e - (1 - weight) * decision.difficulty) / weight) < 1.0})
    steps: list[ProbeStep] = []
    for start, end in zip(breaks, [*breaks[1:], 1.0]):
        refined = policy.refine_after_probe(decision, (start + end) / 2)
        budget = refined.thinking_budget if refined.thinking_budget is not None else 0
        if not steps or steps[-1].thinking_budget != budget:
            steps.append(ProbeStep(as_float32(start), budget))
    return steps


def as_float32(value: float) -> float:
    """The value as the wire's 32-bit float carries it: steps and probe difficulties are compared
    in this form on both sides, so that router and worker never disagree at a step's edge."""
    return struct.unpack("f", struct.pack("f", value))[0]


def tighter_thinking_budget(current: int | None, steps: list[ProbeStep],
                            probe_difficulty: float) -> int | None:
    """The thinking budget the steps give for this probe difficulty when it is below `current`
    (never below 1: the thinking section may already be open), else None."""
    chosen = None
    for step in steps:
        if step.min_probe_difficulty <= probe_difficulty:
            chosen = step.thinking_budget
    if chosen is None or current is None or max(1, chosen) >= current:
        return None
    return max(1, chosen)
