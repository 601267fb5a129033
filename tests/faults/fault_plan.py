"""Where and when worker faults strike: kill -9 and restart, or SIGSTOP and SIGCONT."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.faults.schedule import ScheduleConfig

KILL, STALL = "kill_restart", "stall"
ROLES = ("prefill", "decode")


@dataclass(slots=True, frozen=True)
class FaultSpec:
    """A worker fault: kill -9 then restart after duration_s, or SIGSTOP for duration_s then SIGCONT."""

    kind: str  # KILL or STALL
    target: str  # worker name, e.g. "decode-1"
    start_s: float
    duration_s: float


def plan_faults(rng: random.Random, config: ScheduleConfig) -> list[FaultSpec]:
    """The worker faults of a schedule, in time order."""
    workers = {"prefill": [f"prefill-{i}" for i in range(config.num_prefill)],
               "decode": [f"decode-{i}" for i in range(config.num_decode)]}
    wanted = ([(KILL, role) for role in _roles(config.num_kills, workers)]
              + [(STALL, role) for role in _roles(config.num_stalls, workers)])
    if config.allow_role_outage:
        faults = _faults_anywhere(rng, config, workers, wanted)
    else:
        faults = [f for role in ROLES for f in _faults_in_turn(rng, config, workers[role],
                                                               [k for k, r in wanted if r == role])]
    return sorted(faults, key=lambda f: f.start_s)


def _faults_in_turn(rng: random.Random, config: ScheduleConfig, workers: list[str],
                    kinds: list[str]) -> list[FaultSpec]:
    """One role's faults one after another, stalls first: a role never loses every worker at once
    (a restart takes an unknown time, so a kill comes last)."""
    if kinds.count(KILL) > 1:
        raise ValueError("without allow_role_outage a role takes at most one kill")
    faults, at = [], rng.uniform(0.08, 0.2) * config.duration_s
    targets = rng.sample(workers, len(workers))
    for index, kind in enumerate(sorted(kinds, key=lambda k: k == KILL)):
        low, high = config.kill_down_s if kind == KILL else config.stall_s
        duration = round(rng.uniform(low, high), 2)
        faults.append(FaultSpec(kind, targets[index % len(targets)], round(at, 2), duration))
        at += duration + rng.uniform(1.0, 3.0)
    return faults


def _faults_anywhere(rng: random.Random, config: ScheduleConfig, workers: dict[str, list[str]],
                     wanted: list[tuple[str, str]]) -> list[FaultSpec]:
    """Faults at random times: pools may lose every worker at once."""
    faults: list[FaultSpec] = []
    for kind, role in wanted:
        low, high = config.kill_down_s if kind == KILL else config.stall_s
        for _ in range(100):
            target = rng.choice(workers[role])
            # Early enough that restarted workers are back while requests still arrive.
            start = round(rng.uniform(0.1, 0.5) * config.duration_s, 2)
            if all(f.target != target or abs(f.start_s - start) >= config.same_target_gap_s
                   for f in faults):
                faults.append(FaultSpec(kind, target, start, round(rng.uniform(low, high), 2)))
                break
        else:
            raise ValueError(f"cannot place a {kind} on a {role} worker {config.same_target_gap_s}s "
                             f"away from the other faults on it; lower same_target_gap_s")
    return faults


def _roles(count: int, workers: dict[str, list[str]]) -> list[str]:
    """Alternates decode and prefill so that both roles get each fault kind."""
    roles = [role for role in ("decode", "prefill") if workers[role]]
    return [roles[i % len(roles)] for i in range(count)]
