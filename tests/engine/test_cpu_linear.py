"""The oneDNN-packed Linear transform computes what nn.Linear computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tandem.engine.cpu_linear import PackedLinear, can_pack, pack_linears

torch.set_num_threads(1)

pytestmark = pytest.mark.skipif(not can_pack(torch.device("cpu"), torch.float32),
                                reason="this torch build has no oneDNN")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 48), (37, 48), (2, 5, 48)])
def test_packed_linear_matches_linear(bias, shape):
    linear = nn.Linear(48, 80, bias=bias)
    x = torch.randn(*shape)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x), atol=1e-5, rtol=1e-5)


def test_pack_linears_swaps_every_linear_once():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 4, bias=False)))
    x = torch.randn(3, 8)
    with torch.inference_mode():
        expected = model(x)
        assert pack_linears(model) == 2
        assert pack_linears(model) == 0
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(model[0], PackedLinear) and isinstance(model[2][0], PackedLinear)


def test_only_cpu_float32_and_bfloat16_are_packed():
    assert can_pack(torch.device("cpu"), torch.bfloat16)
    assert not can_pack(torch.device("cpu"), torch.float16)
    assert not can_pack(torch.device("cuda"), torch.float32)
