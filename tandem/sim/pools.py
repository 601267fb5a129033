"""Pools of machines of one type serving one phase (or both, for a colocated cluster)."""

from __future__ import annotations

import functools
import pathlib
from typing import TYPE_CHECKING

from tandem.policy.autoscaling import Phase
from tandem.sim.config import SimConfig
from tandem.sim.hardware import GpuType, ModelSpec, gpu_type, kv_capacity_tokens, model_spec
from tandem.sim.machine import Machine
from tandem.sim.perf_model import DecodeTiming, PerfModel, load_perf_model

if TYPE_CHECKING:
    from tandem.sim.engine import Simulator


@functools.lru_cache(maxsize=32)
def cached_perf_model(csv_path: str, model: str, hardware: str, tensor_parallel: int,
                      decode_timing: DecodeTiming = DecodeTiming.BATCH_SWEEP) -> PerfModel:
    """The perf model of one (model, hardware, tp), read from the CSV once per process."""
    return load_perf_model(pathlib.Path(csv_path), model, hardware, tensor_parallel,
                           decode_timing=decode_timing)


def perf_for(config: SimConfig, gpu_name: str) -> PerfModel:
    """The perf model of `gpu_name` under this configuration's model and tensor parallelism."""
    gpu = gpu_type(gpu_name)
    return cached_perf_model(str(config.perf_csv), config.model, gpu.csv_name,
                             config.tensor_parallel, config.decode_timing)


class Pool:
    """Machines of one GPU type for one role; `routable` are those ready and accepting work."""

    def __init__(self, name: str, phase: Phase, gpu: GpuType, perf: PerfModel, model: ModelSpec,
                 config: SimConfig) -> None:
        self.name, self.phase, self.gpu, self.perf, self.model = name, phase, gpu, perf, model
        self.config = config
        self.machines: list[Machine] = []
        self.routable: list[Machine] = []
        self.by_id: dict[str, Machine] = {}
        self.desired = 0
        self._num_created = 0
        self.kv_capacity = kv_capacity_tokens(gpu, model, config.tensor_parallel)

    def new_machine(self, index: int, now: float, ready_s: float) -> Machine:
        """Creates a machine in this pool (ready at `ready_s`)."""
        cfg = self.config
        machine = Machine(f"{self.name}-{self._num_created}", index, self.name, self.gpu,
                          self.perf, cfg.tensor_parallel, self.kv_capacity, cfg.max_batch_size,
                          cfg.max_batch_tokens, now, ready_s,
                          cache_blocks=max(1, self.kv_capacity // 512))
        self._num_created += 1
        self.machines.append(machine)
        self.desired += 1
        self.refresh()
        return machine

    def refresh(self) -> None:
        """Recomputes which machines the router may use."""
        self.routable = [m for m in self.machines if m.is_ready and m.is_accepting]
        self.by_id = {m.machine_id: m for m in self.machines}


def build_pools(config: SimConfig, sim: Simulator) -> list[Pool]:
    """Creates the configured pools with their initial machines, ready at time 0."""
    model = model_spec(config.model)
    costs = config.gpu_cost_per_hour
    if config.is_disaggregated:
        layout = [("prefill", Phase.PREFILL, config.prefill_gpu, config.num_prefill),
                  ("decode", Phase.DECODE, config.decode_gpu, config.num_decode)]
    else:
        layout = [("colocated", Phase.DECODE, config.gpu, config.num_machines)]
    pools = []
    for name, phase, gpu_name, count in layout:
        pool = Pool(name, phase, gpu_type(gpu_name, costs), perf_for(config, gpu_name), model, config)
        pools.append(pool)
        for _ in range(count):
            sim.machines.append(pool.new_machine(len(sim.machines), 0.0, 0.0))
    return pools
