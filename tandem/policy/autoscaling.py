"""Phase-aware pool autoscaling: a pure state machine, `on_tick(now, metrics) -> ScalingDecision`.

The operator, the cluster simulator and the tests run this same code. It does no I/O and reads no
clock: the caller passes `now` (seconds, any monotonic origin) and one `PoolMetrics` per tick.

Sizing. A prefill pool is sized so that its measured prompt throughput plus the queued prompt
tokens drain within the TTFT SLO; a decode pool so that its sequences fit the batch size that
still meets the inter-token SLO and its KV usage stays under a target. Observed P90 latencies
above the SLO add one replica when the model thinks the pool is large enough.

Anti-flapping, as Kubernetes' HPA `behavior`: every raw recommendation is remembered; the pool
scales up only to the lowest recommendation of the scale-up window (the need was sustained) and
down only to the highest recommendation of the scale-down window; a change moves at most
`max_scale_up_step` / `max_scale_down_step` replicas, at most once per `interval_s`; no new
action while the previous one is pending (ready != desired), unless replicas stay unready past
`pending_timeout_s` (a pod that never schedules): then the decision goes on from the load and says
how many replicas are stalled; a scale-down happens only if the peak load of the scale-down window
still fits the smaller pool within `scale_down_headroom` of its capacity and observed latency
meets the SLO (consolidation check).

Pools never scale to zero (`min_replicas >= 1`): with no pod there is no load to observe and the
first request would wait for a model to load, minutes past any TTFT SLO.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass


class Phase(str, enum.Enum):
    """Which phase a pool serves."""

    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(slots=True, frozen=True)
class PoolMetrics:
    """One observation of one pool (sums or means over its ready replicas)."""

    phase: Phase
    num_ready_replicas: int
    num_desired_replicas: int
    num_queued_prompt_tokens: float
    prefill_tokens_per_s: float
    num_running_seqs: float
    num_waiting_seqs: float
    kv_usage: float
    ttft_p90_s: float | None = None
    itl_p90_s: float | None = None

    def __post_init__(self) -> None:
        if self.num_ready_replicas < 0 or self.num_desired_replicas < 0:
            raise ValueError("PoolMetrics: replica counts must be >= 0")
        for name in ("num_queued_prompt_tokens", "prefill_tokens_per_s", "num_running_seqs",
                     "num_waiting_seqs"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"PoolMetrics: {name} must be a finite number >= 0, got {value}")
        if not 0.0 <= self.kv_usage <= 1.0:
            raise ValueError(f"PoolMetrics: kv_usage must be in [0, 1], got {self.kv_usage}")


@dataclass(slots=True)
class AutoscalingConfig:
    """Bounds, SLOs, per-replica capacity at the SLO and anti-flapping behaviour of one pool."""

    min_replicas: int = 1
    max_replicas: int = 16
    ttft_slo_s: float = 2.0                 # prefill: queued prompts must drain within this
    itl_slo_s: float = 0.1                  # decode: target time between tokens
    interval_s: float = 15.0                # at most one change per interval
    scale_up_stabilization_s: float = 0.0   # scale up to the lowest recommendation of this window
    scale_down_stabilization_s: float = 300.0  # scale down to the highest of this window
    max_scale_up_step: int = 4              # replicas added per change at most
    max_scale_down_step: int = 1            # replicas removed per change at most
    prefill_tokens_per_s_per_replica: float = 8000.0  # one replica's prompt throughput at the SLO
    max_seqs_per_replica_at_itl_slo: float = 64.0     # largest decode batch that meets itl_slo_s
    target_kv_usage: float = 0.8            # decode: keep mean KV block usage under this
    scale_down_headroom: float = 0.9        # shrink only if load fits this fraction of the new size
    pending_timeout_s: float = 600.0        # stop waiting for replicas unready this long (as a
                                            # Deployment's progressDeadlineSeconds)
    enabled: bool = True                    # False: never change the pool, report why

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise ValueError(f"min_replicas must be >= 1, got {self.min_replicas}")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas "
                             f"({self.min_replicas})")
        for name in ("ttft_slo_s", "itl_slo_s", "interval_s", "prefill_tokens_per_s_per_replica",
                     "max_seqs_per_replica_at_itl_slo", "pending_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("scale_up_stabilization_s", "scale_down_stabilization_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_scale_up_step < 1 or self.max_scale_down_step < 1:
            raise ValueError("max_scale_up_step and max_scale_down_step must be >= 1")
        if not 0.0 < self.target_kv_usage <= 1.0:
            raise ValueError(f"target_kv_usage must be in (0, 1], got {self.target_kv_usage}")
        if not 0.0 < self.scale_down_headroom <= 1.0:
            raise ValueError(f"scale_down_headroom must be in (0, 1], got {self.scale_down_headroom}")


@dataclass(slots=True, frozen=True)
class ScalingDecision:
    """What the pool should run now, and why."""

    desired_replicas: int
    reason: str
    is_change: bool
    num_stalled_replicas: int = 0  # replicas unready past the pending timeout (no longer waited for)


@dataclass(slots=True, frozen=True)
class Recommendation:
    """A raw replica count from one observation, before stabilisation, and the load behind it."""

    num_replicas: int
    load_in_replicas: float  # the load as a fractional number of replicas at their SLO capacity
    reason: str


class _Behaviour:
    """HPA-style stabilisation, step limits, pending check and bounds, shared by both policies."""

    def __init__(self, config: AutoscalingConfig, is_consolidation_aware: bool) -> None:
        self.config = config
        self.is_consolidation_aware = is_consolidation_aware
        self._history: collections.deque[tuple[float, int, float]] = collections.deque()
        self._last_change_at: float | None = None
        self._first_seen_at: float | None = None
        self._pending_since: float | None = None

    def decide(self, now: float, metrics: PoolMetrics, raw: Recommendation,
               meets_slo_on: Callable[[int], bool]) -> ScalingDecision:
        """Turns a raw recommendation into a decision under the pool's behaviour settings."""
        cfg = self.config
        current = metrics.num_desired_replicas
        if not cfg.enabled:
            return ScalingDecision(current, f"autoscaling disabled: keeping {current} replicas", False)
        self._remember(now, raw)
        if current < cfg.min_replicas or current > cfg.max_replicas:
            bounded = min(max(current, cfg.min_replicas), cfg.max_replicas)
            return self._change(now, bounded, f"{current} replicas is outside the bounds "
                                f"[{cfg.min_replicas}, {cfg.max_replicas}]")
        waited = self._unready_for(now, metrics)
        if waited is not None and waited < cfg.pending_timeout_s:
            return ScalingDecision(current, f"waiting for the previous action: "
                                   f"{metrics.num_ready_replicas} of {current} replicas ready", False)
        decision = self._decide_on_load(now, current, raw, meets_slo_on)
        stalled = max(0, current - metrics.num_ready_replicas) if waited is not None else 0
        if not stalled:
            return decision
        return dataclasses.replace(
            decision, num_stalled_replicas=stalled,
            reason=f"{stalled} of {current} replicas not ready for {waited:.0f}s (timeout "
                   f"{cfg.pending_timeout_s:g}s), no longer waiting for them; {decision.reason}")

    def _unready_for(self, now: float, metrics: PoolMetrics) -> float | None:
        # Seconds since the first tick with ready != desired (None while they match).
        if metrics.num_ready_replicas == metrics.num_desired_replicas:
            self._pending_since = None
            return None
        if self._pending_since is None:
            self._pending_since = now
        return now - self._pending_since

    def _decide_on_load(self, now: float, current: int, raw: Recommendation,
                        meets_slo_on: Callable[[int], bool]) -> ScalingDecision:
        cfg = self.config
        if self._last_change_at is not None and now - self._last_change_at < cfg.interval_s:
            return ScalingDecision(current, f"holding {current}: last change "
                                   f"{now - self._last_change_at:.1f}s ago < interval {cfg.interval_s}s",
                                   False)
        up_window = self._window(now, cfg.scale_up_stabilization_s)
        down_window = self._window(now, cfg.scale_down_stabilization_s)
        up_floor = min(n for _, n, _ in up_window) if up_window else current
        down_ceiling = max(n for _, n, _ in down_window) if down_window else current
        if up_floor > current:
            target = min(up_floor, current + cfg.max_scale_up_step, cfg.max_replicas)
            return self._change(now, target, f"scale up {current}->{target}: {raw.reason}")
        if down_ceiling < current:
            target = max(down_ceiling, current - cfg.max_scale_down_step, cfg.min_replicas)
            if self.is_consolidation_aware:
                peak = max(load for _, _, load in down_window)
                if peak > cfg.scale_down_headroom * target or not meets_slo_on(target):
                    return ScalingDecision(current, f"keeping {current}: peak load {peak:.2f} "
                                           f"replicas would miss the SLO on {target} "
                                           f"({raw.reason})", False)
            return self._change(now, target, f"scale down {current}->{target}: {raw.reason}")
        return ScalingDecision(current, f"keeping {current}: {raw.reason}", False)

    def _window(self, now: float, window_s: float) -> list[tuple[float, int, float]]:
        # A window counts only once the history covers it: no action on a first glimpse.
        if self._first_seen_at is None or now - self._first_seen_at < window_s:
            return []
        return [entry for entry in self._history if entry[0] > now - window_s or entry[0] == now]

    def _remember(self, now: float, raw: Recommendation) -> None:
        if self._first_seen_at is None:
            self._first_seen_at = now
        self._history.append((now, raw.num_replicas, raw.load_in_replicas))
        horizon = max(self.config.scale_up_stabilization_s, self.config.scale_down_stabilization_s)
        while self._history and self._history[0][0] < now - horizon:
            self._history.popleft()

    def _change(self, now: float, target: int, reason: str) -> ScalingDecision:
        self._last_change_at = now
        return ScalingDecision(target, reason, True)


class PhaseAutoscaler:
    """Sizes one pool from the load of its own phase against per-replica capacity at the SLO."""

    def __init__(self, config: AutoscalingConfig, phase: Phase) -> None:
        self.config = config
        self.phase = Phase(phase)
        self._behaviour = _Behaviour(config, is_consolidation_aware=True)

    def on_tick(self, now: float, metrics: PoolMetrics) -> ScalingDecision:
        """Takes one observation of the pool and returns the replica count it should run."""
        _check_phase(self.phase, metrics)
        raw = self.recommend(metrics)
        return self._behaviour.decide(now, metrics, raw, lambda n: self.meets_slo_on(metrics, n))

    def recommend(self, metrics: PoolMetrics) -> Recommendation:
        """The replica count this observation alone asks for, with its reason."""
        load, reason = self.load_in_replicas(metrics)
        num = _bounded(math.ceil(load - 1e-9), self.config)
        observed, slo, label = _observed_latency(self.phase, metrics, self.config)
        if observed is not None and observed > slo and num <= metrics.num_ready_replicas:
            num = min(metrics.num_ready_replicas + 1, self.config.max_replicas)
            reason = f"observed {label} P90 {observed:.3g}s > SLO {slo:.3g}s; {reason}"
        return Recommendation(num, load, reason)

    def meets_slo_on(self, metrics: PoolMetrics, num_replicas: int) -> bool:
        """Whether the observed load fits `num_replicas` replicas with the scale-down headroom."""
        observed, slo, _ = _observed_latency(self.phase, metrics, self.config)
        if observed is not None and observed > slo:
            return False
        load, _ = self.load_in_replicas(metrics)
        return load <= self.config.scale_down_headroom * num_replicas

    def load_in_replicas(self, metrics: PoolMetrics) -> tuple[float, str]:
        """The load as a (fractional) number of replicas working at their SLO capacity."""
        cfg = self.config
        if self.phase is Phase.PREFILL:
            # Tokens/s the pool must sustain: its current work plus draining the queue in the SLO.
            demand = metrics.prefill_tokens_per_s + metrics.num_queued_prompt_tokens / cfg.ttft_slo_s
            load = demand / cfg.prefill_tokens_per_s_per_replica
            return load, (f"prefill demand {demand:.0f} tok/s ({metrics.num_queued_prompt_tokens:.0f} "
                          f"queued tokens within {cfg.ttft_slo_s:g}s + "
                          f"{metrics.prefill_tokens_per_s:.0f} tok/s) at "
                          f"{cfg.prefill_tokens_per_s_per_replica:.0f} tok/s per replica = "
                          f"{load:.2f} replicas")
        num_seqs = metrics.num_running_seqs + metrics.num_waiting_seqs
        by_seqs = num_seqs / cfg.max_seqs_per_replica_at_itl_slo
        # KV usage is a mean over ready replicas; the blocks in use scale with that pool size.
        by_kv = metrics.kv_usage * metrics.num_ready_replicas / cfg.target_kv_usage
        return max(by_seqs, by_kv), (
            f"{num_seqs:.0f} sequences at {cfg.max_seqs_per_replica_at_itl_slo:g} per replica = "
            f"{by_seqs:.2f} replicas; KV usage {metrics.kv_usage:.2f} on "
            f"{metrics.num_ready_replicas} replicas at target {cfg.target_kv_usage:.2f} = "
            f"{by_kv:.2f} replicas")


class UtilizationAutoscaler:
    """HPA-like baseline: each metric against its target, `ceil(ready * value / target)`, and the
    largest of those counts, as an HPA with several metrics does.

    The metrics are a utilisation (the prefill busy fraction, throughput over capacity, for a
    prefill pool; the mean KV usage for a decode pool) against `target_utilization`, and the
    pool's observed P90 latency (TTFT, inter-token) against its SLO when one was observed; a
    metric within `tolerance` of its target asks for the current size.
    """

    def __init__(self, config: AutoscalingConfig, phase: Phase, target_utilization: float = 0.7,
                 tolerance: float = 0.1) -> None:
        if not 0.0 < target_utilization <= 1.0:
            raise ValueError(f"target_utilization must be in (0, 1], got {target_utilization}")
        if not 0.0 <= tolerance < 1.0:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
        self.config = config
        self.phase = Phase(phase)
        self.target_utilization = target_utilization
        self.tolerance = tolerance
        self._behaviour = _Behaviour(config, is_consolidation_aware=False)

    def utilization(self, metrics: PoolMetrics) -> float:
        """The pool's utilisation in [0, 1] by this policy's one metric."""
        if self.phase is Phase.DECODE:
            return metrics.kv_usage
        if metrics.num_ready_replicas == 0:
            return 0.0  # nothing ready to be busy; on_tick holds the pool
        capacity = metrics.num_ready_replicas * self.config.prefill_tokens_per_s_per_replica
        return min(1.0, metrics.prefill_tokens_per_s / capacity)

    def on_tick(self, now: float, metrics: PoolMetrics) -> ScalingDecision:
        """Takes one observation of the pool and returns the replica count it should run."""
        _check_phase(self.phase, metrics)
        ready = metrics.num_ready_replicas
        util = self.utilization(metrics)
        ratios = {f"utilisation {util:.2f} vs target {self.target_utilization:.2f}":
                  util / self.target_utilization}
        observed, slo, label = _observed_latency(self.phase, metrics, self.config)
        if observed is not None:
            ratios[f"observed {label} P90 {observed:.3g}s vs SLO {slo:.3g}s"] = observed / slo
        counts = {name: self._replicas(ready, ratio) for name, ratio in ratios.items()}
        if ready == 0:
            counts = {"no ready replica to measure": metrics.num_desired_replicas}
        num = max(counts.values())
        reason = "; ".join(f"{name}: {count}" for name, count in counts.items())
        raw = Recommendation(_bounded(num, self.config), ready * max(ratios.values()),
                             f"{reason} (on {ready} replicas)")
        return self._behaviour.decide(now, metrics, raw, lambda n: True)

    def _replicas(self, ready: int, ratio: float) -> int:
        # One HPA metric's count: unchanged within the tolerance of its target.
        if abs(ratio - 1.0) <= self.tolerance:
            return ready
        return math.ceil(ready * ratio - 1e-9)


def _bounded(num: int, config: AutoscalingConfig) -> int:
    return min(max(num, config.min_replicas), config.max_replicas)


def _observed_latency(phase: Phase, metrics: PoolMetrics,
                      config: AutoscalingConfig) -> tuple[float | None, float, str]:
    # A pool's own phase latency as users see it, its SLO and its name.
    if phase is Phase.PREFILL:
        return metrics.ttft_p90_s, config.ttft_slo_s, "TTFT"
    return metrics.itl_p90_s, config.itl_slo_s, "inter-token"


def _check_phase(phase: Phase, metrics: PoolMetrics) -> None:
    if metrics.phase is not phase:
        raise ValueError(f"metrics of a {metrics.phase.value} pool given to a {phase.value} autoscaler")
