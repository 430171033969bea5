"""Launcher-level tests of kernels/contrastive_loss.py (CPU tensors run through the Triton interpreter).

Oracle: the full S = scale·a·bᵀ in float64 from the same (already rounded) inputs. The LSEs are fp32
results of exact inputs with fp32 accumulation, so they are held to the fp32 tolerance in every input
dtype; gradients to the input dtype's tolerance (on a GPU P is rounded to it) and to the
flash-attention rule against PyTorch in the input dtype.
"""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from clipfast.kernels import contrastive_loss as K
from clipfast.kernels import _tiles as tiles
from clipfast.kernels._common import DTYPE_NAMES
from tests.numerics import assert_close, assert_matches_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (M, N, d): 1×1, masked tails on both axes, M ≠ N both ways, CLIP text length 77, d = 64/80/96
# (BLOCK_D 64 / 16 / 32 classes).
SHAPES = [(1, 1, 64), (7, 33, 80), (33, 7, 96), (65, 70, 64), (50, 77, 80)]


def _features(n, d, dtype, device="cpu"):
    return F.normalize(torch.randn(n, d, device=device, dtype=torch.float64), dim=-1).to(dtype)


def _lse_ref(a, b, scale, dtype=torch.float64):
    s = scale.to(dtype) * a.to(dtype) @ b.to(dtype).T
    return s.logsumexp(1), s.logsumexp(0)


def _grads_ref(a, b, scale, lse_row, lse_col, coef_row, coef_col, dtype=torch.float64, positive=None):
    """da, db, dscale of Σ coef_row·lse_row + Σ coef_col·lse_col − Σ_i c_i·S_{i,i+k} (positive = (k, c))
    with the given (global) LSEs held fixed."""
    a_, b_ = a.to(dtype), b.to(dtype)
    dots = a_ @ b_.T
    s = scale.to(dtype) * dots
    p = (coef_row.to(dtype)[:, None] * torch.exp(s - lse_row.to(dtype)[:, None])
         + coef_col.to(dtype)[None, :] * torch.exp(s - lse_col.to(dtype)[None, :]))
    if positive is not None:
        k, c = positive
        i = torch.arange(a.shape[0])
        ok = (i + k >= 0) & (i + k < b.shape[0])
        p[i[ok], i[ok] + k] -= torch.as_tensor(c, dtype=dtype).expand(a.shape[0])[ok]
    return scale.to(dtype) * p @ b_, scale.to(dtype) * p.T @ a_, (p * dots).sum()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,d", SHAPES)
def test_fwd_matches_fp64(m, n, d, dtype):
    a, b = _features(m, d, dtype), _features(n, d, dtype)
    scale = torch.tensor(100.0)
    lse_row, lse_col = K.contrastive_loss_fwd(a, b, scale)
    assert lse_row.dtype == lse_col.dtype == torch.float32
    ref_row, ref_col = _lse_ref(a, b, scale)
    assert_close(lse_row, ref_row, dtype=torch.float32, name="lse_row")
    assert_close(lse_col, ref_col, dtype=torch.float32, name="lse_col")


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,d", SHAPES[1:4])
def test_bwd_matches_fp64(m, n, d, dtype, deterministic):
    a, b = _features(m, d, dtype), _features(n, d, dtype)
    scale = torch.tensor(30.0)
    lse_row, lse_col = _lse_ref(a, b, scale)
    lse_row, lse_col = lse_row.float() + 0.25, lse_col.float() - 0.5  # "global" LSEs differ from local
    coef_row, coef_col = torch.randn(m) / m, torch.rand(n) / n  # signed and unequal coefficients
    da, db, dscale = K.contrastive_loss_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col,
                                            deterministic=deterministic)
    assert da.dtype == db.dtype == dscale.dtype == torch.float32 and dscale.shape == ()
    exact = _grads_ref(a, b, scale, lse_row, lse_col, coef_row, coef_col)
    torch_fp = torch.float32 if dtype == torch.float32 else dtype
    same = _grads_ref(a, b, scale, lse_row, lse_col, coef_row, coef_col, dtype=torch_fp)
    for name, out, ref, ref_same in (("da", da, exact[0], same[0]), ("db", db, exact[1], same[1])):
        assert_close(out, ref, dtype=dtype, name=name)
        assert_matches_reference(out.to(dtype), ref_same, ref, name=name)
    assert_matches_reference(dscale, same[2].float(), exact[2], name="dscale")


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("k", [0, 3, -4])
def test_bwd_positives_and_dscale(k, deterministic):
    """The positives' −c_i·S_{i,i+k} term and d(scale) folded into the kernel, per-row weights,
    rectangular block (some rows have no positive)."""
    m, n, d = 21, 26, 32
    a, b = _features(m, d, torch.float32), _features(n, d, torch.float32)
    scale = torch.tensor(20.0)
    lse_row, lse_col = _lse_ref(a, b, scale)
    lse_row, lse_col = lse_row.float(), lse_col.float()
    coef_row, coef_col, c = torch.rand(m) / m, torch.rand(n) / n, torch.rand(m) / m
    da, db, dscale = K.contrastive_loss_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col, positive=(k, c),
                                            deterministic=deterministic)
    exact = _grads_ref(a, b, scale, lse_row, lse_col, coef_row, coef_col, positive=(k, c))
    assert_close(da, exact[0], dtype=torch.float32, name="da")
    assert_close(db, exact[1], dtype=torch.float32, name="db")
    assert_close(dscale, exact[2], dtype=torch.float32, name="dscale")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_scale_zero_gives_finite_dscale(dtype):
    """s = 0 (logit_scale = −inf in log space): S = 0, uniform softmax; d(scale) is Σ G·a·bᵀ, finite
    (issue 9: it was da·a / s = NaN). da = db = 0 exactly."""
    n, d = 13, 64
    a, b = _features(n, d, dtype), _features(n, d, dtype)
    scale = torch.tensor(0.0)
    lse_row, lse_col, pos = K.contrastive_loss_fwd(a, b, scale, positive_offset=0)
    ref_row, ref_col = _lse_ref(a, b, scale)
    assert_close(lse_row, ref_row, dtype=torch.float32, name="lse_row")
    assert_close(pos, (a.double() * b.double()).sum(1), dtype=torch.float32, name="pos")
    coef = torch.full((n,), 0.5 / n)
    da, db, dscale = K.contrastive_loss_bwd(a, b, scale, lse_row, lse_col, coef, coef, positive=(0, 1.0 / n))
    exact = _grads_ref(a, b, scale, ref_row, ref_col, coef, coef, positive=(0, 1.0 / n))
    assert torch.isfinite(dscale)
    assert_close(dscale, exact[2], dtype=torch.float32, name="dscale")
    assert torch.equal(da, torch.zeros(n, d)) and torch.equal(db, torch.zeros(n, d))


@pytest.mark.parametrize("k", [0, 5, -3])
def test_fwd_positive_dots(k):
    """pos_i = a_i·b_{i+k} from the forward's own tiles (0 where i + k is outside the block)."""
    m, n, d = 70, 66, 48
    a, b = _features(m, d, torch.float16), _features(n, d, torch.float16)
    lse_row, lse_col, pos = K.contrastive_loss_fwd(a, b, torch.tensor(10.0), positive_offset=k)
    i = torch.arange(m)
    ok = (i + k >= 0) & (i + k < n)
    want = torch.zeros(m, dtype=torch.float64)
    want[ok] = (a.double()[i[ok]] * b.double()[i[ok] + k]).sum(1)
    assert_close(pos, want, dtype=torch.float32, name="pos")


@pytest.mark.parametrize("dtype", DTYPES)
def test_end_to_end_clip_loss_and_grads(dtype):
    """Loss from the LSEs + diagonal, and grads from bwd with coef = 0.5/N, equal CLIP's loss in fp64."""
    n, d = 37, 64
    a, b = _features(n, d, dtype), _features(n, d, dtype)
    scale = torch.tensor(100.0)
    lse_row, lse_col = K.contrastive_loss_fwd(a, b, scale)
    diag = scale.double() * (a.double() * b.double()).sum(-1)
    loss = 0.5 * ((lse_row.double() - diag).mean() + (lse_col.double() - diag).mean())

    a64, b64 = a.double().requires_grad_(), b.double().requires_grad_()
    logits = scale.double() * a64 @ b64.T
    labels = torch.arange(n)
    ref = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    ref.backward()
    assert_close(loss, ref.detach(), dtype=torch.float32, name="loss")

    coef = torch.full((n,), 0.5 / n)
    da, db, _ = K.contrastive_loss_bwd(a, b, scale, lse_row, lse_col, coef, coef)
    # The ops layer adds the diagonal's gradient: −scale·b/N for a, −scale·a/N for b.
    da = da - scale * b.float() / n
    db = db - scale * a.float() / n
    assert_close(da, a64.grad, dtype=dtype, name="da")
    assert_close(db, b64.grad, dtype=dtype, name="db")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["matched", "antialigned", "random"])
def test_scale_100_half_precision_is_finite_and_accurate(dtype, case):
    """logit_scale = ln 100: identical pairs (S_ii = 100), all S = −100, and random features."""
    n, d = 40, 64
    a = _features(n, d, dtype)
    b = {"matched": a, "antialigned": None, "random": _features(n, d, dtype)}[case]
    if case == "antialigned":
        a = _features(1, d, dtype).expand(n, d)
        b = -a
    scale = torch.tensor(100.0)
    lse_row, lse_col = K.contrastive_loss_fwd(a, b, scale)
    assert torch.isfinite(lse_row).all() and torch.isfinite(lse_col).all()
    ref_row, ref_col = _lse_ref(a, b, scale)
    assert_close(lse_row, ref_row, dtype=torch.float32, name="lse_row")
    assert_close(lse_col, ref_col, dtype=torch.float32, name="lse_col")
    coef = torch.full((n,), 0.5 / n)
    da, db, _ = K.contrastive_loss_bwd(a, b, scale, lse_row, lse_col, coef, coef)
    assert torch.isfinite(da).all() and torch.isfinite(db).all()
    exact = _grads_ref(a, b, scale, ref_row, ref_col, coef, coef)
    assert_close(da, exact[0], dtype=dtype, name="da")
    assert_close(db, exact[1], dtype=dtype, name="db")


def test_non_contiguous_inputs():
    m, n, d = 19, 23, 80
    big_a = torch.randn(m, 2 * d)
    a = big_a[:, ::2]  # stride along d = 2 → made contiguous
    b = torch.randn(d + 16, n)[:d].T  # (n, d) transposed view, stride along d = n
    rows = torch.randn(m, d + 48)[:, 8 : 8 + d]  # row stride d + 48, unit stride along d → used as is
    scale = torch.tensor(1.0).reshape(1, 1)  # |S| up to ~40 with these unnormalised features
    for x in (a, rows):
        lse_row, lse_col = K.contrastive_loss_fwd(x, b, scale)
        ref_row, ref_col = _lse_ref(x, b, scale)
        assert_close(lse_row, ref_row, dtype=torch.float32, name="lse_row")
        assert_close(lse_col, ref_col, dtype=torch.float32, name="lse_col")
        coef_row, coef_col = torch.rand(m), torch.rand(2 * n)[::2]
        ref_row, ref_col = ref_row.float(), ref_col.float()
        da, db, _ = K.contrastive_loss_bwd(x, b, scale, ref_row, ref_col, coef_row, coef_col)
        exact = _grads_ref(x, b, scale, ref_row, ref_col, coef_row, coef_col)
        assert_close(da, exact[0], dtype=torch.float32, name="da")
        assert_close(db, exact[1], dtype=torch.float32, name="db")


@pytest.mark.parametrize("target", [1, 10**6])
def test_column_splits(monkeypatch, target):
    """One column split per row block, and one column tile per program (split da rows: shared by atomics,
    or per-split partials when deterministic), give the same results."""
    monkeypatch.setattr(tiles, "TARGET_PROGRAMS", target)
    m, n, d = 20, 150, 32  # 3 column tiles of 64
    assert tiles.splits(1, 3) == ((1, 3) if target == 1 else (3, 1))
    a, b = _features(m, d, torch.float32), _features(n, d, torch.float32)
    scale = torch.tensor(50.0)
    lse_row, lse_col = K.contrastive_loss_fwd(a, b, scale)
    ref_row, ref_col = _lse_ref(a, b, scale)
    assert_close(lse_row, ref_row, dtype=torch.float32, name="lse_row")
    assert_close(lse_col, ref_col, dtype=torch.float32, name="lse_col")
    coef_row, coef_col = torch.rand(m) / m, torch.rand(n) / n
    exact = _grads_ref(a, b, scale, lse_row, lse_col, coef_row, coef_col)
    for det in (False, True):
        plan = tiles.bwd_plan(m, n, d, torch.float32, atomic_db=not det)
        assert plan.n_splits == (1 if target == 1 else 3) and plan.atomic_da == (target > 1 and not det)
        da, db, _ = K.contrastive_loss_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col, deterministic=det)
        assert_close(da, exact[0], dtype=torch.float32, name=f"da det={det}")
        assert_close(db, exact[1], dtype=torch.float32, name=f"db det={det}")


def test_splits_never_empty():
    for n_row_blocks in (1, 2, 3, 7, 100, 600):
        for n_col_tiles in (1, 2, 5, 64, 513):
            splits, per = tiles.splits(n_row_blocks, n_col_tiles)
            assert 1 <= splits <= n_col_tiles and (splits - 1) * per < n_col_tiles <= splits * per


def test_row_groups_cover_every_block_once():
    for m, n, bm, bn in [(1, 1, 128, 64), (300, 200, 64, 64), (32768, 32768, 128, 64), (1024, 262144, 128, 64),
                         (262144, 1000, 64, 64), (262144, 262144, 128, 64)]:
        groups, per_group, n_splits, per_split = tiles.row_groups(m, n, bm, bn)
        n_row_blocks, n_col_tiles = -(-m // bm), -(-n // bn)
        assert (groups - 1) * per_group < n_row_blocks <= groups * per_group
        assert (n_splits - 1) * per_split < n_col_tiles <= n_splits * per_split
        assert groups * n_splits <= max(1.1 * tiles.TARGET_PROGRAMS, n_row_blocks * n_col_tiles)
    assert tiles.row_groups(32768, 32768, 128, 64) == (22, 12, 24, 22)
    assert tiles.row_groups(262144, 262144, 128, 64) == (23, 90, 23, 179)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_grouped_rows_and_split_columns(monkeypatch, dtype):
    """Programs walking several row blocks (an uneven last group) merge their column partials exactly."""
    monkeypatch.setattr(tiles, "TARGET_PROGRAMS", 4)
    m, n, d = 300, 200, 48
    bm = tiles.config("fwd", dtype, d)[0]
    assert tiles.row_groups(m, n, bm, 64) == ((2, 3, 2, 2) if bm == 64 else (2, 2, 2, 2))
    a, b = _features(m, d, dtype), _features(n, d, dtype)
    scale = torch.tensor(100.0)
    lse_row, lse_col, pos = K.contrastive_loss_fwd(a, b, scale, positive_offset=-3)
    ref_row, ref_col = _lse_ref(a, b, scale)
    assert_close(lse_row, ref_row, dtype=torch.float32, name="lse_row")
    assert_close(lse_col, ref_col, dtype=torch.float32, name="lse_col")
    ref_pos = torch.zeros(m, dtype=torch.float64)
    ref_pos[3:n + 3] = (a.double()[3:n + 3] * b.double()).sum(1)  # row i's positive: column i − 3
    assert_close(pos, ref_pos, dtype=torch.float32, name="pos")


def test_launcher_memory_is_linear():
    """The launchers' own allocations (counted on meta tensors, nothing runs) beside the fp32 gradients: O(N),
    ≤ 128 MB at N = 262144 for the forward and backward together (4.3 GB for the forward before row groups)."""
    from clipfast.kernels._launcher_memory import launcher_memory

    d, meta = 512, dict(device="meta")
    workspace = {}
    for n in (32768, 262144):
        a, b = torch.empty(n, d, dtype=torch.float16, **meta), torch.empty(n, d, dtype=torch.float16, **meta)
        scale, vec = torch.empty(1, **meta), torch.empty(n, **meta)
        fwd = launcher_memory(K.contrastive_loss_fwd, a, b, scale, positive_offset=0)
        assert fwd.returned == 3 * n * 4  # lse_row, lse_col, the positives' dots
        for det in (False, True):
            bwd = launcher_memory(K.contrastive_loss_bwd, a, b, scale, vec, vec, vec, vec, positive=(0, vec),
                                  deterministic=det)
            assert bwd.returned == 2 * n * d * 4 + 4  # da, db (fp32), dscale
            workspace[n, det] = fwd.workspace + bwd.workspace
    assert max(workspace[262144, det] for det in (False, True)) <= 128 * 2**20
    # A small block splits its columns: atomic da needs no partials; deterministic da has one per split.
    a, vec = torch.empty(4096, d, dtype=torch.float16, **meta), torch.empty(4096, **meta)
    small = {det: launcher_memory(K.contrastive_loss_bwd, a, a, torch.empty(1, **meta), vec, vec, vec, vec,
                                  deterministic=det).workspace for det in (False, True)}
    n_splits = tiles.bwd_plan(4096, 4096, d, torch.float16, atomic_db=False).n_splits
    assert small[False] < 2**20 and small[True] >= n_splits * 4096 * d * 4 > 8 * 2**20
    assert workspace[262144, True] <= 8.2 * workspace[32768, True]


def test_deterministic_mode_is_bitwise_reproducible():
    m, n, d = 33, 65, 64
    a, b = _features(m, d, torch.float16), _features(n, d, torch.float16)
    scale = torch.tensor(100.0)
    lse_row, lse_col = K.contrastive_loss_fwd(a, b, scale)
    assert torch.equal(lse_row, K.contrastive_loss_fwd(a, b, scale)[0])
    coef_row, coef_col = torch.rand(m), torch.rand(n)
    first = K.contrastive_loss_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col, deterministic=True)
    second = K.contrastive_loss_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col, deterministic=True)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    atomic = K.contrastive_loss_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col, deterministic=False)
    # The transposed launch rounds S = a·bᵀ in another order (amplified by scale = 100 in exp), so the two
    # agree to the inputs' (fp16) tolerance, not to fp32's.
    assert_close(atomic[0], first[0], dtype=torch.float16, name="da")
    assert_close(atomic[1], first[1], dtype=torch.float16, name="db")


def test_empty_blocks():
    a, b = torch.randn(0, 64), torch.randn(5, 64)
    scale = torch.tensor(1.0)
    lse_row, lse_col = K.contrastive_loss_fwd(a, b, scale)
    assert lse_row.shape == (0,) and torch.equal(lse_col, torch.full((5,), float("-inf")))
    da, db, _ = K.contrastive_loss_bwd(a, b, scale, lse_row, torch.zeros(5), torch.zeros(0), torch.ones(5))
    assert da.shape == (0, 64) and torch.equal(db, torch.zeros(5, 64))


def test_zero_coefficients_give_zero_grads():
    a, b = _features(9, 64, torch.float16), _features(11, 64, torch.float16)
    scale = torch.tensor(100.0)
    lse_row, lse_col = K.contrastive_loss_fwd(a, b, scale)
    da, db, _ = K.contrastive_loss_bwd(a, b, scale, lse_row, lse_col, torch.zeros(9), torch.zeros(11))
    assert torch.equal(da, torch.zeros(9, 64)) and torch.equal(db, torch.zeros(11, 64))


def test_bad_inputs():
    a, b, s = torch.randn(4, 64), torch.randn(5, 64), torch.tensor(1.0)
    with pytest.raises(TypeError, match="same dtype"):
        K.contrastive_loss_fwd(a, b.half(), s)
    with pytest.raises(TypeError, match="a: expected float32"):
        K.contrastive_loss_fwd(a.double(), b.double(), s)
    with pytest.raises(ValueError, match="feature size"):
        K.contrastive_loss_fwd(a, torch.randn(5, 32), s)
    with pytest.raises(ValueError, match="b: expected a 2-D"):
        K.contrastive_loss_fwd(a, b[None], s)
    with pytest.raises(ValueError, match="scale: expected a 1-element"):
        K.contrastive_loss_fwd(a, b, torch.ones(2))
    with pytest.raises(ValueError, match=r"lse_col: expected shape \(5,\)"):
        K.contrastive_loss_bwd(a, b, s, torch.zeros(4), torch.zeros(4), torch.zeros(4), torch.zeros(5))
    with pytest.raises(ValueError, match=r"coef_row: expected shape \(4,\)"):
        K.contrastive_loss_bwd(a, b, s, torch.zeros(4), torch.zeros(5), torch.zeros(5), torch.zeros(5))


def test_aot_specs_cover_every_heuristic_choice():
    """Every config the launchers can pick for d in 1…1280 is compiled by the AOT test."""
    specs = K.aot_specs()
    listed = {(spec.kernel.__name__, spec.signature.get("a_ptr"), spec.constexprs.get("INPUT_PRECISION"),
               tuple(spec.constexprs.get(k) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D")), spec.num_warps,
               spec.num_stages) for spec in specs}
    listed_bwd = {(spec.signature["a_ptr"], spec.constexprs["INPUT_PRECISION"], spec.constexprs["ATOMIC_DA"],
                   spec.constexprs["ATOMIC_DB"], spec.constexprs["BLOCK_D"])
                  for spec in specs if spec.kernel is K._contrastive_loss_bwd_kernel}
    for dtype, ty in DTYPE_NAMES.items():
        for precision in (("ieee", "tf32x3") if dtype == torch.float32 else ("tf32",)):
            for d in range(1, 1281):
                for kind, kernel in (("fwd", K._contrastive_loss_fwd_kernel), ("bwd", K._contrastive_loss_bwd_kernel)):
                    bm, bn, bd, warps, stages = tiles.config(kind, dtype, d)
                    assert (kernel.__name__, f"*{ty}", precision, (bm, bn, bd), warps, stages) in listed, (kind, d)
                for atomic_da, atomic_db in ((False, True), (True, True), (False, False)):
                    bd = 16 if atomic_da else tiles.block_d(d, dtype)  # as tiles.bwd_plan
                    assert (f"*{ty}", precision, atomic_da, atomic_db, bd) in listed_bwd, (d, atomic_da, atomic_db)


def test_fp32_dots_follow_torchs_tf32_switch():
    """fp32: ``ieee`` by default, ``tf32x3`` once TF32 is allowed, through the new API (here) or the legacy
    ones (a fresh process: torch refuses some reads after mixing them); 16-bit dots ignore it."""
    from clipfast.kernels._common import fp32_precision, input_precision

    assert input_precision(torch.float32) == "ieee" and input_precision(torch.float16) == "tf32"
    with fp32_precision("tf32"):
        assert input_precision(torch.float32) == "tf32x3" and input_precision(torch.bfloat16) == "tf32"
        a, b = _features(70, 48, torch.float32), _features(65, 48, torch.float32)  # the launch path runs
        lse_row, lse_col = K.contrastive_loss_fwd(a, b, torch.tensor(100.0))  # (the interpreter's dots are fp32)
        assert_close(lse_col, _lse_ref(a, b, torch.tensor(100.0))[1], dtype=torch.float32, name="lse_col")
    assert input_precision(torch.float32) == "ieee"
    code = ("import torch; from clipfast.kernels._common import input_precision as p; {}; print(p(torch.float32))")
    for legacy in ("torch.backends.cuda.matmul.allow_tf32 = True", "torch.set_float32_matmul_precision('high')"):
        out = subprocess.run([sys.executable, "-c", code.format(legacy)], capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["tf32x3"], (legacy, out.stdout, out.stderr)


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,d", [(1000, 777, 512), (257, 2049, 1280)])
def test_gpu_tf32x3_is_near_fp32(m, n, d):
    """With TF32 allowed the fp32 dots run as tf32x3: within the fp32 rule (2 × PyTorch's fp32 error + the
    fp32 floor) of the fp64 oracle at scale 100, where plain TF32 (≈ 0.05 per logit) would fail."""
    from clipfast.kernels._common import fp32_precision

    a, b = _features(m, d, torch.float32, "cuda"), _features(n, d, torch.float32, "cuda")
    scale = torch.tensor(100.0, device="cuda")
    ref_row, ref_col = _lse_ref(a, b, scale)
    torch_row, torch_col = _lse_ref(a, b, scale, dtype=torch.float32)  # PyTorch's default: ieee fp32
    with fp32_precision("tf32"):
        lse_row, lse_col = K.contrastive_loss_fwd(a, b, scale)
        coef_row, coef_col = torch.full((m,), 0.5 / m, device="cuda"), torch.full((n,), 0.5 / n, device="cuda")
        da, db, _ = K.contrastive_loss_bwd(a, b, scale, ref_row.float(), ref_col.float(), coef_row, coef_col)
    assert_matches_reference(lse_row, torch_row, ref_row, name="lse_row")
    assert_matches_reference(lse_col, torch_col, ref_col, name="lse_col")
    exact = _grads_ref(a, b, scale, ref_row, ref_col, coef_row, coef_col)
    same = _grads_ref(a, b, scale, ref_row, ref_col, coef_row, coef_col, dtype=torch.float32)
    assert_matches_reference(da, same[0], exact[0], name="da")
    assert_matches_reference(db, same[1], exact[1], name="db")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,d", [(1000, 777, 512), (257, 2049, 1280), (4096, 64, 768)])
def test_gpu_matches_fp64(m, n, d, dtype):
    """Real tensor-core numerics (P rounded to the input dtype, fp32 atomics) at CLIP-sized blocks."""
    a, b = _features(m, d, dtype, "cuda"), _features(n, d, dtype, "cuda")
    scale = torch.tensor(100.0, device="cuda")
    lse_row, lse_col = K.contrastive_loss_fwd(a, b, scale)
    ref_row, ref_col = _lse_ref(a, b, scale)
    assert_close(lse_row, ref_row, dtype=torch.float32, name="lse_row")
    assert_close(lse_col, ref_col, dtype=torch.float32, name="lse_col")
    coef_row, coef_col = torch.full((m,), 0.5 / m, device="cuda"), torch.full((n,), 0.5 / n, device="cuda")
    exact = _grads_ref(a, b, scale, ref_row, ref_col, coef_row, coef_col)
    results = {det: K.contrastive_loss_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col, deterministic=det)
               for det in (False, True)}
    for det, (da, db, _) in results.items():
        assert_close(da, exact[0], dtype=dtype, name=f"da det={det}")
        assert_close(db, exact[1], dtype=dtype, name=f"db det={det}")
    again = K.contrastive_loss_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col, deterministic=True)
    assert torch.equal(again[0], results[True][0]) and torch.equal(again[1], results[True][1])
    assert torch.equal(K.contrastive_loss_fwd(a, b, scale)[1], lse_col)
