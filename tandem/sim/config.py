"""Settings of one simulation: the cluster's design and pools, links, routing, scaling and SLOs."""

from __future__ import annotations

import enum
import pathlib
from dataclasses import dataclass, field

from tandem.policy.worker_choice import WorkerChoiceConfig
from tandem.sim.hardware import GPU_TYPES, default_perf_csv
from tandem.sim.perf_model import DecodeTiming


class Design(str, enum.Enum):
    """How the cluster splits the two phases."""

    COLOCATED = "colocated"  # every machine prefills and decodes its own requests (baseline)
    SPLITWISE = "splitwise"  # prefill pool + decode pool; prompts go to the decode pool only when
                             # the prefill pool is saturated (Splitwise's mixed pool)
    TANDEM = "tandem"        # Splitwise plus conditional disaggregation of short uncached prompts


class AutoscaleMode(str, enum.Enum):
    """Which policy sizes the pools during the run."""

    STATIC = "static"
    UTILIZATION = "utilization"
    PHASE = "phase"


@dataclass(slots=True, frozen=True)
class SloSpec:
    """Splitwise's SLOs: limits on percentiles of slowdown against an unloaded machine."""

    ttft: tuple[float, float, float] = (2.0, 3.0, 6.0)    # P50, P90, P99
    tbt: tuple[float, float, float] = (1.25, 1.5, 5.0)
    e2e: tuple[float, float, float] = (1.25, 1.5, 5.0)

    def __post_init__(self) -> None:
        for name in ("ttft", "tbt", "e2e"):
            limits = getattr(self, name)
            if len(limits) != 3 or any(not x >= 1.0 for x in limits):
                raise ValueError(f"SLO {name} needs three slowdown limits >= 1, got {limits}")


def default_worker_choice(design: Design) -> WorkerChoiceConfig:
    """Routing thresholds per design (the same policy code, set as each design works)."""
    if design is Design.TANDEM:
        return WorkerChoiceConfig(min_disaggregate_prompt_tokens=512,
                                  prefill_saturation_tokens=8192)
    # Splitwise always splits, unless the least-loaded prompt machine has over 8,192 tokens
    # pending (its mixed-pool scheduler's prompt_max_pending_batch_tokens).
    return WorkerChoiceConfig(min_disaggregate_prompt_tokens=0, prefill_saturation_tokens=8192)


@dataclass(slots=True)
class SimConfig:
    """Everything one simulation run needs besides the trace."""

    design: Design = Design.COLOCATED
    model: str = "llama2-70b"
    tensor_parallel: int = 8                 # GPUs per machine, one model instance per machine
    gpu: str = "H100"                        # colocated machines
    num_machines: int = 4                    # colocated machines
    prefill_gpu: str = "H100"
    decode_gpu: str = "H100"
    num_prefill: int = 2
    num_decode: int = 2
    max_batch_size: int = 512                # sequences per iteration (Splitwise's setting)
    max_batch_tokens: int = 2048             # prompt tokens per iteration; whole prompts only
    link_bandwidth_gb_s: float = 200.0       # per prefill machine (Splitwise: 8 x 25 GB/s)
    link_latency_s: float = 1e-4
    kv_overlap: float = 0.9                  # share of the KV transfer hidden behind the prefill
    worker_choice: WorkerChoiceConfig | None = None  # None: the design's default
    prefix_caching: bool | None = None       # reuse cached prompt blocks (None: Tandem only, as
                                             # the Splitwise systems had no prefix cache)
    autoscale: AutoscaleMode = AutoscaleMode.STATIC
    autoscale_interval_s: float = 15.0
    provision_delay_s: float = 120.0         # a new machine serves after this (weights loading)
    min_machines: int = 1                    # per pool, when autoscaling
    max_machines: int = 64
    scale_up_stabilization_s: float = 0.0
    scale_down_stabilization_s: float = 300.0
    utilization_target: float = 0.7          # the utilisation baseline's threshold
    prefill_capacity_fraction: float = 0.8   # phase policy: share of a prefill machine's peak
                                             # prompt throughput it plans to use at the SLO
    slo: SloSpec = field(default_factory=SloSpec)
    reference_gpu: str = "A100"              # slowdowns are against an unloaded machine of this type
    gpu_cost_per_hour: dict[str, float] = field(default_factory=dict)  # $ per GPU-hour, by GPU name
    idle_power_fraction: float = 0.2         # of TDP, when a machine runs nothing
    perf_csv: pathlib.Path = field(default_factory=default_perf_csv)
    decode_timing: DecodeTiming = DecodeTiming.BATCH_SWEEP  # how decode iterations are timed

    def __post_init__(self) -> None:
        self.design = Design(self.design)
        self.autoscale = AutoscaleMode(self.autoscale)
        self.decode_timing = DecodeTiming(self.decode_timing)
        if self.design is Design.COLOCATED:
            _at_least(self, "num_machines", 1)
            if self.autoscale is not AutoscaleMode.STATIC:
                raise ValueError("autoscaling sizes separate prefill and decode pools: use "
                                 "--design splitwise or tandem with --autoscale "
                                 f"{self.autoscale.value}")
        else:
            _at_least(self, "num_prefill", 1)
            _at_least(self, "num_decode", 1)
        for name in ("tensor_parallel", "max_batch_size", "max_batch_tokens", "min_machines"):
            _at_least(self, name, 1)
        if self.max_machines < self.min_machines:
            raise ValueError(f"max_machines ({self.max_machines}) < min_machines ({self.min_machines})")
        for name in ("link_bandwidth_gb_s", "autoscale_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("link_latency_s", "provision_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.kv_overlap < 1.0:
            raise ValueError(f"kv_overlap must be in [0, 1), got {self.kv_overlap}")
        for name in ("utilization_target", "prefill_capacity_fraction"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.idle_power_fraction <= 1.0:
            raise ValueError(f"idle_power_fraction must be in [0, 1], got {self.idle_power_fraction}")
        unknown = set(self.gpu_cost_per_hour) - set(GPU_TYPES)
        if unknown:
            raise ValueError(f"costs given for unknown GPU types {sorted(unknown)}; "
                             f"known: {sorted(GPU_TYPES)}")
        if self.worker_choice is None:
            self.worker_choice = default_worker_choice(self.design)
        if self.prefix_caching is None:
            self.prefix_caching = self.design is Design.TANDEM

    @property
    def is_disaggregated(self) -> bool:
        """Whether the cluster has a separate prefill pool."""
        return self.design is not Design.COLOCATED


def _at_least(config: SimConfig, name: str, low: int) -> None:
    if getattr(config, name) < low:
        raise ValueError(f"{name} must be >= {low}, got {getattr(config, name)}")
