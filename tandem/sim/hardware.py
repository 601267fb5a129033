"""Machine types and models the simulator knows: names, power, price, memory, KV size per token.

A machine is one DGX-class server whose GPUs run one tensor-parallel model instance, as in the
Splitwise simulator. Prices are dollars per GPU-hour, by default the list prices the Splitwise
paper uses (A100 2.21, H100 4.76: an A100 machine costs 2.21/4.76 of an H100 machine); power is
each GPU's TDP (the Splitwise paper: A100 400 W, H100 700 W, power-capped H100 at 70%).
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class GpuType:
    """One kind of machine: the perf-model hardware it maps to, its power and its price."""

    name: str
    csv_name: str             # `hardware` column of the Splitwise perf model
    tdp_watts: float          # per GPU
    cost_per_gpu_hour: float  # dollars per GPU-hour
    memory_bytes: float = 80e9  # per GPU


@dataclass(slots=True, frozen=True)
class ModelSpec:
    """What the simulator needs to know of a model beyond its measured timings."""

    name: str
    weight_bytes: float
    kv_bytes_per_token: float  # K and V over all layers, fp16


GPU_TYPES: dict[str, GpuType] = {
    "A100": GpuType("A100", "a100-80gb", tdp_watts=400.0, cost_per_gpu_hour=2.21),
    "H100": GpuType("H100", "h100-80gb", tdp_watts=700.0, cost_per_gpu_hour=4.76),
    "H100-capped": GpuType("H100-capped", "h100-80gb-pcap", tdp_watts=490.0,
                           cost_per_gpu_hour=4.76),
}

MODELS: dict[str, ModelSpec] = {
    # Llama2-70B: 80 layers, 8 KV heads (GQA) of 128 dims: 2 * 80 * 8 * 128 * 2 bytes per token.
    "llama2-70b": ModelSpec("llama2-70b", weight_bytes=138e9, kv_bytes_per_token=327_680.0),
    # BLOOM-176B: 70 layers, full multi-head attention over 14,336 dims: 2 * 70 * 14336 * 2 bytes.
    "bloom-176b": ModelSpec("bloom-176b", weight_bytes=352e9, kv_bytes_per_token=4_014_080.0),
}


def gpu_type(name: str, cost_per_gpu_hour: dict[str, float] | None = None) -> GpuType:
    """Looks up a machine type by its short name ("H100") or perf-model name ("h100-80gb")."""
    for gpu in GPU_TYPES.values():
        if name in (gpu.name, gpu.csv_name) or name.lower() == gpu.name.lower():
            if cost_per_gpu_hour and gpu.name in cost_per_gpu_hour:
                return GpuType(gpu.name, gpu.csv_name, gpu.tdp_watts, cost_per_gpu_hour[gpu.name],
                               gpu.memory_bytes)
            return gpu
    known = ", ".join(f"{g.name} ({g.csv_name})" for g in GPU_TYPES.values())
    raise ValueError(f"unknown GPU type {name!r}; known: {known}")


def model_spec(name: str) -> ModelSpec:
    """Looks up a model by its perf-model name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def kv_capacity_tokens(gpu: GpuType, model: ModelSpec, num_gpus: int,
                       memory_fraction: float = 0.9) -> int:
    """How many tokens of KV cache fit in a machine after the weights (vLLM-style memory share)."""
    free = gpu.memory_bytes * num_gpus * memory_fraction - model.weight_bytes
    if free <= 0:
        raise ValueError(f"{model.name} does not fit on {num_gpus} x {gpu.name}")
    return int(free // model.kv_bytes_per_token)


def shared_data_dir() -> pathlib.Path:
    """The shared reference data folder: $TANDEM_SHARED_DATA or ../shared/data beside the repo."""
    env = os.environ.get("TANDEM_SHARED_DATA")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def default_perf_csv() -> pathlib.Path:
    """The Splitwise performance model CSV in the shared data folder."""
    return shared_data_dir() / "perf" / "splitwise_perf_model.csv"
