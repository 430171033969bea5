"""clipfast.ops.layer_norm: fp32 math for every dtype, cast back, parity with F.layer_norm, bad input."""
import pytest
import torch
import torch.nn.functional as F

from clipfast.ops.layer_norm import layer_norm
from tests.numerics import assert_close


@pytest.mark.parametrize("shape", [(3, 77, 512), (2, 50, 768), (5, 1000)])
def test_fp32_equals_torch(shape):
    x, w, b = torch.randn(shape), torch.randn(shape[-1]), torch.randn(shape[-1])
    assert torch.equal(layer_norm(x, w, b), F.layer_norm(x, (shape[-1],), w, b, 1e-5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_normalized_in_fp32(dtype):
    x = (torch.randn(4, 77, 200) * 30 + 100).to(dtype)  # large mean: low-precision math would lose it
    w, b = torch.randn(200), torch.randn(200)
    out = layer_norm(x, w, b)
    assert out.dtype == dtype
    exact = F.layer_norm(x.double(), (200,), w.double(), b.double(), 1e-5)
    assert_close(out, exact.to(dtype), name=f"layer_norm {dtype}")


def test_low_precision_weights_and_noncontiguous():
    x = torch.randn(200, 3, 64).transpose(0, 1)
    w, b = torch.randn(64).bfloat16(), torch.randn(64).bfloat16()
    assert not x.is_contiguous()
    assert_close(layer_norm(x, w, b), F.layer_norm(x.contiguous(), (64,), w.float(), b.float()), name="bf16 params")


def test_gradcheck_fp64():
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    w, b = (torch.randn(7, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(layer_norm, (x, w, b))


def test_bad_inputs():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="weight: expected shape"):
        layer_norm(x, torch.ones(7), torch.zeros(8))
    with pytest.raises(TypeError, match="x: expected a floating-point"):
        layer_norm(x.long(), None, None)
