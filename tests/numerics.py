"""The one tolerance table, and the comparisons every kernel test uses.

Rule (from flash-attention's tests): a kernel in dtype X is right when its error against an exact
(fp64/fp32) reference is at most twice the error of the PyTorch reference computed in the same dtype X,
plus a small floor for ops whose reference is exact in X (the dtype's atol, scaled by the output's magnitude
when that exceeds 1: an fp32 value of ~200 cannot be closer than ~1e-5). NaN/inf must appear in the same
places.
"""
import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Tol:
    atol: float
    rtol: float


# bf16 allows one bf16 ulp on top of rounding: the Triton interpreter truncates fp32->bf16 stores
# instead of rounding (triton #11584).
TOLERANCES = {
    torch.float64: Tol(atol=1e-10, rtol=1e-7),
    torch.float32: Tol(atol=1e-5, rtol=1e-5),
    torch.float16: Tol(atol=1e-3, rtol=1e-3),
    torch.bfloat16: Tol(atol=1e-2, rtol=2 * 2**-8),
}


def _check_nonfinite(actual, expected, name):
    a_nan, e_nan = torch.isnan(actual), torch.isnan(expected)
    assert torch.equal(a_nan, e_nan), f"{name}: NaN pattern differs ({int(a_nan.sum())} vs {int(e_nan.sum())} NaNs)"
    a_inf, e_inf = torch.isinf(actual), torch.isinf(expected)
    assert torch.equal(a_inf, e_inf), f"{name}: inf pattern differs"
    assert torch.equal(actual[a_inf], expected[e_inf]), f"{name}: inf signs differ"


def assert_close(actual, expected, *, dtype=None, name="output"):
    """``actual`` ≈ ``expected`` within ``TOLERANCES[dtype]`` (default: actual's dtype), in float64."""
    tol = TOLERANCES[dtype or actual.dtype]
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    _check_nonfinite(actual, expected, name)
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], atol=tol.atol, rtol=tol.rtol, msg=lambda m: f"{name}: {m}")


def assert_matches_reference(out, ref_same_dtype, ref_exact, *, name="output"):
    """Flash-attention rule: max|out − exact| ≤ 2·max|ref_same_dtype − exact| + atol floor of out's dtype."""
    tol = TOLERANCES[out.dtype]
    out64, ref64, exact = (t.detach().double().cpu() for t in (out, ref_same_dtype, ref_exact))
    assert out64.shape == exact.shape, f"{name}: shape {tuple(out64.shape)} != {tuple(exact.shape)}"
    _check_nonfinite(out64, exact, name)
    finite = torch.isfinite(exact)
    err = (out64 - exact)[finite].abs().max().item() if finite.any() else 0.0
    ref_err = (ref64 - exact)[finite].abs().max().item() if finite.any() else 0.0
    floor = tol.atol * max(1.0, exact[finite].abs().max().item() if finite.any() else 0.0)
    bound = 2 * ref_err + floor
    assert err <= bound, f"{name}: max error {err:.3e} > 2 x PyTorch's {ref_err:.3e} + {floor:.1e}"
