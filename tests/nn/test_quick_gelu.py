"""clipfast.nn QuickGELU / LinearQuickGELU against open_clip's modules with the same random weights."""
from collections import OrderedDict

import pytest
import torch
from open_clip.transformer import QuickGELU as OpenClipQuickGELU
from torch import nn

from clipfast.nn.quick_gelu import LinearQuickGELU, QuickGELU
from tests.numerics import assert_close


def _open_clip_mlp(width, hidden):
    return nn.Sequential(OrderedDict([
        ("c_fc", nn.Linear(width, hidden)), ("gelu", OpenClipQuickGELU()), ("c_proj", nn.Linear(hidden, width)),
    ]))


def _fused_mlp(width, hidden):
    return nn.Sequential(OrderedDict([
        ("c_fc", LinearQuickGELU(width, hidden)), ("gelu", nn.Identity()), ("c_proj", nn.Linear(hidden, width)),
    ]))


def test_quick_gelu_module_matches_open_clip():
    x = torch.randn(2, 77, 96, requires_grad=True)
    xr = x.detach().requires_grad_()
    y, yr = QuickGELU()(x), OpenClipQuickGELU()(xr)
    assert_close(y, yr, name="y")
    y.sum().backward()
    yr.sum().backward()
    assert_close(x.grad, xr.grad, name="grad_x")
    assert list(QuickGELU().state_dict()) == []


def test_linear_quick_gelu_has_linear_parameters():
    m = LinearQuickGELU(64, 256)
    assert isinstance(m, nn.Linear)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {"weight": (256, 64), "bias": (256,)}


def test_mlp_loads_open_clip_state_dict_strictly_and_matches():
    ref = _open_clip_mlp(48, 192)
    fused = _fused_mlp(48, 192)
    fused.load_state_dict(ref.state_dict(), strict=True)
    assert list(fused.state_dict()) == list(ref.state_dict())
    x = torch.randn(3, 50, 48)
    y, yr = fused(x), ref(x)
    assert_close(y, yr, name="mlp output")
    y.square().sum().backward()
    yr.square().sum().backward()
    for (name, p), (_, pr) in zip(fused.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, pr.grad, name=f"grad {name}")


@pytest.mark.parametrize("bias", [True, False])
def test_linear_quick_gelu_without_bias_and_odd_width(bias):
    m = LinearQuickGELU(31, 77, bias=bias)
    x = torch.randn(5, 31)
    expected = OpenClipQuickGELU()(nn.functional.linear(x, m.weight, m.bias))
    assert_close(m(x), expected, name="y")


def test_linear_quick_gelu_under_autocast_bf16():
    # The matmul output is bf16 while the bias parameter stays fp32: the bias is cast, not rejected.
    m = LinearQuickGELU(32, 64)
    x = torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        yr = OpenClipQuickGELU()(nn.functional.linear(x, m.weight, m.bias))
    assert y.dtype == torch.bfloat16
    assert_close(y, yr.to(torch.bfloat16), name="y")
    y.float().sum().backward()
    assert m.bias.grad.dtype == torch.float32 and m.weight.grad is not None
