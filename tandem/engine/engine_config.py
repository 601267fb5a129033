"""Engine limits and placement: one validated dataclass shared by the scheduler and the runner."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from tandem.engine.kv_cache import dtype_from_name


@dataclass(slots=True)
class EngineConfig:
    """Settings of one LLMEngine."""

    # Tokens per KV block.
    block_size: int = 16
    # KV blocks in the cache; None sizes the cache from kv_cache_memory_fraction.
    num_blocks: int | None = None
    # Share of the device's free memory (CPU: available RAM) given to the KV cache.
    kv_cache_memory_fraction: float = 0.1
    # Sequences in one step's batch (running, prefilling or decoding).
    max_num_seqs: int = 64
    # Tokens computed in one step over all sequences: decodes first, then prefill chunks.
    max_num_batched_tokens: int = 2048
    # Longest prompt plus output; None takes the model's max_position_embeddings.
    max_model_len: int | None = None
    # Weights and KV cache dtype: "float32", "bfloat16" or "float16".
    dtype: str = "float32"
    device: str = "cpu"
    enable_prefix_caching: bool = True
    # On CPU, swap the model's Linear layers for oneDNN-prepacked ones (cpu_linear.py).
    pack_cpu_linears: bool = True
    # Debug: fill free KV blocks with a canary pattern and check it on reuse (kv_canary.py).
    debug_kv_canary: bool = False

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            _check_positive(name, getattr(self, name))
        if self.num_blocks is not None:
            _check_positive("num_blocks", self.num_blocks)
        if self.max_model_len is not None:
            _check_positive("max_model_len", self.max_model_len)
        if not 0.0 < self.kv_cache_memory_fraction <= 1.0:
            raise ValueError(
                f"kv_cache_memory_fraction must be in (0, 1], got {self.kv_cache_memory_fraction}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}) so that every running sequence can decode each step")
        dtype_from_name(self.dtype)
        try:
            torch.device(self.device)
        except RuntimeError as error:
            raise ValueError(f"invalid device {self.device!r}: {error}") from None

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype as a torch.dtype."""
        return dtype_from_name(self.dtype)


def resolve_num_blocks(config: EngineConfig, bytes_per_block: int) -> int:
    """Number of KV blocks: config.num_blocks, or the memory fraction divided by a block's bytes."""
    if config.num_blocks is not None:
        return config.num_blocks
    num_blocks = int(_free_memory_bytes(config.device) * config.kv_cache_memory_fraction) // bytes_per_block
    if num_blocks <= 0:
        raise ValueError(
            f"kv_cache_memory_fraction {config.kv_cache_memory_fraction} of free memory on "
            f"{config.device} holds no KV block of {bytes_per_block} bytes; set num_blocks")
    return num_blocks


def resolve_max_model_len(config: EngineConfig, max_position_embeddings: int) -> int:
    """Longest prompt plus output: config.max_model_len, at most the model's positions."""
    if config.max_model_len is None:
        return max_position_embeddings
    if config.max_model_len > max_position_embeddings:
        raise ValueError(f"max_model_len {config.max_model_len} exceeds the model's "
                         f"max_position_embeddings ({max_position_embeddings})")
    return config.max_model_len


def _free_memory_bytes(device: str) -> int:
    if torch.device(device).type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(torch.device(device))
        return free_bytes
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"EngineConfig.{name} must be a positive integer, got {value!r}")
