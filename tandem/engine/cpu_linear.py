"""A CPU transform: Linear layers with weights prepacked for oneDNN, applied from outside the model.

On CPU, torch's default float32 matmul (MKL) reaches well under half of what oneDNN's kernels do
on a prepacked weight, at every batch size a step sees (1 decode token to thousands of prefill
tokens), and MKL is slowest on AMD processors. The model keeps its nn.Linear code; the runner swaps
each one for a PackedLinear computing the same product (float32 accumulation, other summation
order), as gpt-fast applies quantisation.
"""

from __future__ import annotations

import torch
from torch import nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """True where packing applies: CPU, a dtype oneDNN has fast kernels for, and oneDNN present."""
    return device.type == "cpu" and dtype in PACKABLE_DTYPES and torch.backends.mkldnn.is_available()


class PackedLinear(nn.Module):
    """y = x W^T + b with W held in oneDNN's blocked layout (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            # [out, in] weight reordered once into oneDNN's layout; an opaque tensor from here on.
            self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach()))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out]."""
        flat = x.reshape(-1, self.in_features).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed_weight, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(model: nn.Module) -> int:
    """Replaces every nn.Linear in model (in place) by a PackedLinear; returns how many."""
    targets = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if type(child) is nn.Linear]
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    return len(targets)
