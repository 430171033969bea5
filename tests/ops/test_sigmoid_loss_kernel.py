"""Launcher-level tests of kernels/sigmoid_loss.py (CPU tensors run through the Triton interpreter).

Oracle: the full logit matrix in float64 from the same inputs, OpenCLIP SigLipLoss's formula
(labels 2·eye − 1, −logsigmoid(labels·logits)), differentiated by autograd.
"""
import pytest
import torch
import torch.nn.functional as F

from clipfast.kernels import _tiles as tiles
from clipfast.kernels import sigmoid_loss as K
from tests.numerics import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _features(n, d, dtype):
    return F.normalize(torch.randn(n, d, dtype=torch.float64), dim=-1).to(dtype)


def _ref(a, b, scale, bias, positive_offset):
    """(loss_row, da, db, dscale, dbias) in float64 for loss = Σ_ij softplus(−z_ij·x_ij)."""
    a64, b64 = a.double().requires_grad_(), b.double().requires_grad_()
    s64, bias64 = scale.double().reshape(()).requires_grad_(), bias.double().reshape(()).requires_grad_()
    x = s64 * a64 @ b64.T + bias64
    m, n = x.shape
    z = -torch.ones(m, n, dtype=torch.float64)
    if positive_offset is not None:
        i = torch.arange(m)
        j = i + positive_offset
        ok = (j >= 0) & (j < n)
        z[i[ok], j[ok]] = 1.0
    loss_row = -F.logsigmoid(z * x).sum(1)
    loss_row.sum().backward()
    return loss_row.detach(), a64.grad, b64.grad, s64.grad, bias64.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,d,offset", [(1, 1, 64, 0), (33, 33, 80, 0), (7, 65, 96, 3), (65, 20, 64, -5),
                                          (50, 77, 64, None)])
def test_fwd_bwd_match_fp64(m, n, d, offset, dtype):
    a, b = _features(m, d, dtype), _features(n, d, dtype)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)  # SigLIP's initial logit scale / bias
    loss_row = K.sigmoid_loss_fwd(a, b, scale, bias, offset)
    ref = _ref(a, b, scale, bias, offset)
    assert loss_row.dtype == torch.float32
    assert_close(loss_row, ref[0], dtype=torch.float32, name="loss_row")
    for deterministic in (False, True):
        da, db, dscale, dbias = K.sigmoid_loss_bwd(a, b, scale, bias, torch.tensor(1.0), offset,
                                                   deterministic=deterministic)
        assert_close(da, ref[1], dtype=dtype, name="da")
        assert_close(db, ref[2], dtype=dtype, name="db")
        assert_close(dscale, ref[3], dtype=torch.float32, name="dscale")
        assert_close(dbias, ref[4], dtype=torch.float32, name="dbias")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_split_columns_share_da(monkeypatch, dtype):
    """One column tile per program: the splits' da by fp32 atomics (atomic db) or per-split partials
    (deterministic) give the fp64 gradients."""
    monkeypatch.setattr(tiles, "TARGET_PROGRAMS", 10**6)
    m, n, d = 20, 300, 48
    a, b = _features(m, d, dtype), _features(n, d, dtype)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    ref = _ref(a, b, scale, bias, 2)
    for det in (False, True):
        plan = tiles.bwd_plan(m, n, d, dtype, atomic_db=not det)
        assert plan.n_splits > 1 and plan.atomic_da == (not det)
        da, db, dscale, dbias = K.sigmoid_loss_bwd(a, b, scale, bias, torch.tensor(1.0), 2, deterministic=det)
        assert_close(da, ref[1], dtype=dtype, name=f"da det={det}")
        assert_close(db, ref[2], dtype=dtype, name=f"db det={det}")
        assert_close(dscale, ref[3], dtype=torch.float32, name="dscale")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_extreme_logits_are_finite(dtype):
    """scale = 100, bias = ±30 on identical/opposite features: saturated sigmoids, no inf/NaN."""
    a = _features(20, 64, dtype)
    for b, bias in ((a, 30.0), (-a, -30.0), (a, -30.0)):
        scale, bias = torch.tensor(100.0), torch.tensor(bias)
        loss_row = K.sigmoid_loss_fwd(a, b, scale, bias, 0)
        ref = _ref(a, b, scale, bias, 0)
        assert_close(loss_row, ref[0], dtype=torch.float32, name="loss_row")
        grads = K.sigmoid_loss_bwd(a, b, scale, bias, torch.tensor(0.05), 0)
        for name, out, r in zip(("da", "db", "dscale", "dbias"), grads, ref[1:]):
            assert torch.isfinite(out).all(), name
            assert_close(out, 0.05 * r, dtype=dtype if name in ("da", "db") else torch.float32, name=name)


def test_deterministic_db_is_bitwise_reproducible_and_grad_scales():
    a, b = _features(30, 64, torch.bfloat16), _features(70, 64, torch.bfloat16)
    scale, bias, grad = torch.tensor(10.0), torch.tensor(-10.0), torch.tensor(0.25)
    first = K.sigmoid_loss_bwd(a, b, scale, bias, grad, 2, deterministic=True)
    second = K.sigmoid_loss_bwd(a, b, scale, bias, grad, 2, deterministic=True)
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    unit = K.sigmoid_loss_bwd(a, b, scale, bias, torch.tensor(1.0), 2, deterministic=True)
    for x, y in zip(first, unit):
        assert_close(x, 0.25 * y, dtype=torch.float32)


def test_non_contiguous_and_empty():
    a = torch.randn(13, 160)[:, ::2]  # stride along d = 2
    b = torch.randn(80, 17).T  # (17, 80) transposed view
    scale, bias = torch.tensor(2.0), torch.tensor(0.5)
    ref = _ref(a, b, scale, bias, 1)
    assert_close(K.sigmoid_loss_fwd(a, b, scale, bias, 1), ref[0], dtype=torch.float32, name="loss_row")
    da, db, _, _ = K.sigmoid_loss_bwd(a, b, scale, bias, torch.tensor(1.0), 1)
    assert_close(da, ref[1], dtype=torch.float32, name="da")
    assert_close(db, ref[2], dtype=torch.float32, name="db")
    assert K.sigmoid_loss_fwd(torch.randn(0, 8), torch.randn(3, 8), scale, bias).shape == (0,)


def test_bad_inputs():
    a, b, s = torch.randn(4, 64), torch.randn(5, 64), torch.tensor(1.0)
    with pytest.raises(TypeError, match="same dtype"):
        K.sigmoid_loss_fwd(a, b.half(), s, s)
    with pytest.raises(ValueError, match="bias: expected a 1-element"):
        K.sigmoid_loss_fwd(a, b, s, torch.zeros(2))
    with pytest.raises(TypeError, match="positive_offset"):
        K.sigmoid_loss_fwd(a, b, s, s, 1.5)
    with pytest.raises(ValueError, match="grad: expected a 1-element"):
        K.sigmoid_loss_bwd(a, b, s, s, torch.ones(3))


@pytest.mark.parametrize("scale,bias,tol", [(10.0, -10.0, 1e-6), (10.0, -16.0, 1e-6), (100.0, -60.0, 2e-5)])
def test_fp32_rows_match_fp64_relative(scale, bias, tol):
    """Per-row sums of a negatives-only block at SigLIP's bias −10 and beyond: every row within 1e-6
    relative of float64 (log(1 + e) gave 7.5e-5 at −10, 3.5e-3 at −14); at |x| ≈ 60 the fp32 rounding of
    x itself bounds the accuracy (|x|·2⁻²⁴ relative in e^x), and no term is dropped."""
    a, b = _features(9, 32, torch.float32), _features(150, 32, torch.float32)
    loss_row = K.sigmoid_loss_fwd(a, b, torch.tensor(scale), torch.tensor(bias), None)
    x = scale * a.double() @ b.double().T + bias
    exact = F.softplus(x).sum(1)
    rel = ((loss_row.double() - exact).abs() / exact).max().item()
    assert rel <= tol, f"max relative error {rel:.2e}"
