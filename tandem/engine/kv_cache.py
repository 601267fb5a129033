"""The paged KV cache tensor: its layout is a contract shared by the engine and KV transfer.

Layout: one tensor of shape [num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim]
(index 0 of dim 2 is K, 1 is V). With this order, one block of one layer (K and V together) is
one contiguous region, and so is any run of consecutive block ids within a layer: KV transfer
sends a request's blocks layer by layer, one message per run, straight from and into this tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(slots=True, frozen=True)
class KVCacheSpec:
    """Shape and dtype of a paged KV cache."""

    num_layers: int
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_blocks", "block_size", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"KVCacheSpec.{name} must be positive, got {getattr(self, name)}")

    @property
    def shape(self) -> tuple[int, ...]:
        """The cache tensor's shape."""
        return (self.num_layers, self.num_blocks, 2, self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def bytes_per_block_per_layer(self) -> int:
        """Bytes of one block of one layer (K and V)."""
        element_size = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.block_size * self.num_kv_heads * self.head_dim * element_size

    @property
    def dtype_name(self) -> str:
        """The dtype as named in the wire contract (KVLayout.dtype)."""
        return str(self.dtype).removeprefix("torch.")


def allocate_kv_cache(spec: KVCacheSpec, device: str | torch.device = "cpu") -> torch.Tensor:
    """Allocates a zeroed cache tensor with the contract layout."""
    return torch.zeros(spec.shape, dtype=spec.dtype, device=device)


def dtype_from_name(name: str) -> torch.dtype:
    """Parses a dtype name ("float32", "bfloat16", "float16"), rejecting anything else."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r}; expected one of {sorted(DTYPES)}") from None
