"""Triton kernels for the chunked SigLIP (sigmoid) loss: each logit tile is computed once, O(M + N) memory.

Math. For one rectangular block a (M, d), b (N, d), scalars s (``scale`` = exp(logit_scale)) and
``bias``:

    x_ij = s · a_i·b_j + bias                         (M, N), never materialised
    z_ij = +1 if j == i + positive_offset else −1     (positive_offset None: all −1, a negatives-only block)
    loss_row_i = Σ_j −log σ(z_ij · x_ij) = Σ_j softplus(−z_ij · x_ij)

OpenCLIP's SigLipLoss is Σ_i loss_row_i / M_global over the diagonal block plus the negatives-only
blocks of the other ranks; the ops layer assembles that. The backward of c · Σ_ij softplus(−z_ij·x_ij)
(c = ``grad``, e.g. grad_out / M_global) with G_ij = −c · z_ij · σ(−z_ij · x_ij) is

    da = s · G · b        db = s · Gᵀ · a        d scale = Σ_ij G_ij · a_i·b_j        d bias = Σ_ij G_ij

Algorithm: as ``contrastive_loss`` (same grid of row blocks × column splits, d looped in BLOCK_D chunks,
same config table). Forward: per-row sums in registers, per-split partials (splits, M) summed by the
launcher in a fixed order: deterministic. Backward: each tile recomputed once; the kernel uses
Ĝ = z·σ(−z·x) ∈ [−1, 1] (safe to cast to fp16/bf16 for the tensor cores) and the launcher multiplies by
−c. da is accumulated into rows this program owns (split columns: as ``contrastive_loss``, fp32 atomics
with atomic db, per-split partials when deterministic); db is either fp32 ``atomic_add`` (default: 3
backward matmuls, db not bitwise reproducible) or, with ``deterministic=True``, a second launch on the
transposed problem (b, a, −positive_offset): 4 backward matmuls, bitwise reproducible. d scale and
d bias come from per-row partials summed in a fixed order.

Configs and bytes per FLOP: ``contrastive_loss._config``, the same tiles and the same traffic per tile
(a, b, da, db), so the table and figures of ``contrastive_loss`` hold here: 16-bit backward 128×128×32,
8 warps, 1 stage at d % 32 == 0, 0.0260 B/FLOP with atomic db (0.0273 per deterministic launch);
forward 128×64, 0.0234; fp32 0.0625 forward / 0.0729 backward. All compile with no spills or stack
frame for sm_80 and sm_90 (``make aot-report`` prints them per spec).

Stability and precision: softplus(y) = max(y, 0) + log1p(exp(−|y|)) and σ(−y) = (y > 0 ? e : 1) / (1 + e)
with e = exp(−|y|) never overflow, at any scale and bias; log1p is computed accurately (``_tiles.softplus``),
so the many tiny negative terms at SigLIP's bias −10 keep fp32 relative accuracy (≤ 1e-6 per row in
the tests against float64), and terms below 2⁻²⁴ are not dropped.

fp32 dots: ``ieee``, or ``tf32x3`` when TF32 is allowed for fp32 matmuls, as in ``contrastive_loss``.

Limits: as ``contrastive_loss`` (2-D inputs, unit stride along d, float32/float16/bfloat16).
"""
import torch
import triton
import triton.language as tl

from . import _aot
from ._common import check_scalar, input_precision
from ._tiles import aot_bytes_per_flop  # noqa: F401 (the AOT report's model of this module)
from ._tiles import accumulate_tile_grads, column_tile, dot_tile, softplus, split_span
from ._tiles import aot_launch_shapes, aot_launch_variants, bwd_plan, check_features, config, splits


@triton.jit
def _sigmoid_loss_fwd_kernel(
    a_ptr, b_ptr, scale_ptr, bias_ptr,
    loss_ptr,  # (n_splits, M) fp32: per-row loss sums over this split's columns
    M, N, D,
    stride_am, stride_bn,  # row strides (elements); stride along d is 1
    tiles_per_split,  # column tiles each program walks
    pos_offset,  # positives are j == i + pos_offset (used when HAS_POS)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_POS: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = offs_m < M
    offs_d = tl.arange(0, BLOCK_D)
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am

    loss = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_start, n_end = split_span(pid_s, tiles_per_split, N, BLOCK_N)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n, col_valid, b_rows = column_tile(b_ptr, n0, N, stride_bn, BLOCK_N)
        acc = dot_tile(a_rows, b_rows, row_valid, col_valid, offs_d, D,  # a[rows] · b[cols]ᵀ
                       BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, INPUT_PRECISION)
        x = acc * scale + bias
        if HAS_POS:
            y = tl.where(offs_n[None, :] == offs_m[:, None] + pos_offset, -x, x)  # −z·x
        else:
            y = x
        loss += tl.sum(tl.where(row_valid[:, None] & col_valid[None, :], softplus(y), 0.0), axis=1)
    tl.store(loss_ptr + pid_s.to(tl.int64) * M + offs_m, loss, mask=row_valid)


@triton.jit
def _sigmoid_loss_bwd_kernel(
    a_ptr, b_ptr, scale_ptr, bias_ptr,
    da_ptr,  # (n_splits, M, D) fp32, zero-initialised: Σ_j s·Ĝ_ij·b_j over this split's columns
    db_ptr,  # (N, D) fp32, zero-initialised; Σ_i s·Ĝ_ij·a_i accumulated atomically when ATOMIC_DB
    dscale_ptr, dbias_ptr,  # (n_splits, M) fp32: Σ_j Ĝ_ij·a_i·b_j and Σ_j Ĝ_ij
    M, N, D,
    stride_am, stride_bn,
    tiles_per_split,
    pos_offset,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_POS: tl.constexpr, ATOMIC_DA: tl.constexpr, ATOMIC_DB: tl.constexpr, UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = offs_m < M
    offs_d = tl.arange(0, BLOCK_D)
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    if ATOMIC_DA:  # one (M, D) da that the column splits share
        da_rows = da_ptr + offs_m.to(tl.int64)[:, None] * D
    else:  # one (M, D) partial per column split
        da_rows = da_ptr + (pid_s.to(tl.int64) * M + offs_m.to(tl.int64))[:, None] * D

    dscale = tl.zeros((BLOCK_M,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_start, n_end = split_span(pid_s, tiles_per_split, N, BLOCK_N)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n, col_valid, b_rows = column_tile(b_ptr, n0, N, stride_bn, BLOCK_N)
        acc = dot_tile(a_rows, b_rows, row_valid, col_valid, offs_d, D,  # a[rows] · b[cols]ᵀ
                       BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, INPUT_PRECISION)
        x = acc * scale + bias
        if HAS_POS:
            z = tl.where(offs_n[None, :] == offs_m[:, None] + pos_offset, 1.0, -1.0)
        else:
            z = tl.full((BLOCK_M, BLOCK_N), -1.0, dtype=tl.float32)
        y = z * x
        e = tl.exp(-tl.abs(y))
        g = z * tl.where(y > 0, e, 1.0) / (1.0 + e)  # Ĝ = z·σ(−y), no overflow
        g = tl.where(row_valid[:, None] & col_valid[None, :], g, 0.0)
        dscale += tl.sum(g * acc, axis=1)
        dbias += tl.sum(g, axis=1)
        p = g * scale
        if not UPCAST:
            p = p.to(a_ptr.dtype.element_ty)
        accumulate_tile_grads(p, a_rows, b_rows, da_rows, db_ptr, offs_n, row_valid, col_valid, offs_d, D,
                              BLOCK_D, ATOMIC_DA, ATOMIC_DB, UPCAST, INPUT_PRECISION)
        # The next tile re-reads da rows other threads of this program stored.
        tl.debug_barrier()
    row_off = pid_s.to(tl.int64) * M + offs_m
    tl.store(dscale_ptr + row_off, dscale, mask=row_valid)
    tl.store(dbias_ptr + row_off, dbias, mask=row_valid)


def _check_offset(positive_offset):
    if positive_offset is not None and (isinstance(positive_offset, bool) or not isinstance(positive_offset, int)):
        raise TypeError(f"positive_offset: expected an int or None, got {type(positive_offset).__name__}")
    return (0, False) if positive_offset is None else (positive_offset, True)


def sigmoid_loss_fwd(a, b, scale, bias, positive_offset=0):
    """Per-row SigLIP loss sums of one block, each logit tile computed once.

    Args:
        a: (M, d) features (rows), float32/float16/bfloat16; any row stride.
        b: (N, d) features (columns), same dtype and device.
        scale: 1-element tensor s = exp(logit_scale); bias: 1-element tensor (logit_bias).
        positive_offset: pairs (i, i + positive_offset) are positives (0 for the diagonal block);
            None for a negatives-only block.
    Returns:
        loss_row: (M,) float32, loss_row_i = Σ_j softplus(−z_ij·(s·a_i·b_j + bias)). Deterministic.
    """
    a, b = check_features(a, b)
    dev = a.device
    scale, bias = check_scalar("scale", scale, dev), check_scalar("bias", bias, dev)
    offset, has_pos = _check_offset(positive_offset)
    (m, d), n = a.shape, b.shape[0]
    if m == 0 or n == 0:
        return torch.zeros(m, device=dev)
    bm, bn, bd, warps, stages = config("fwd", a.dtype, d)
    n_row_blocks = triton.cdiv(m, bm)
    n_splits, tiles_per_split = splits(n_row_blocks, triton.cdiv(n, bn))
    loss = torch.empty(n_splits, m, device=dev, dtype=torch.float32)
    _sigmoid_loss_fwd_kernel[(n_row_blocks, n_splits)](
        a, b, scale, bias, loss, m, n, d, a.stride(0), b.stride(0), tiles_per_split, offset,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, HAS_POS=has_pos, UPCAST=dev.type == "cpu",
        INPUT_PRECISION=input_precision(a.dtype), num_warps=warps, num_stages=stages)
    return loss[0] if n_splits == 1 else loss.sum(0)


def _bwd_launch(a, b, scale, bias, offset, has_pos, atomic_db):
    (m, d), n = a.shape, b.shape[0]
    plan = bwd_plan(m, n, d, a.dtype, atomic_db)
    n_splits = plan.n_splits
    da = torch.zeros(1 if plan.atomic_da else n_splits, m, d, device=a.device, dtype=torch.float32)
    db = torch.zeros(n, d, device=a.device, dtype=torch.float32) if atomic_db else da
    dscale = torch.empty(n_splits, m, device=a.device, dtype=torch.float32)
    dbias = torch.empty_like(dscale)
    _sigmoid_loss_bwd_kernel[(plan.n_row_blocks, n_splits)](
        a, b, scale, bias, da, db, dscale, dbias, m, n, d, a.stride(0), b.stride(0), plan.tiles_per_split, offset,
        BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_D=plan.block_d, HAS_POS=has_pos, ATOMIC_DA=plan.atomic_da,
        ATOMIC_DB=atomic_db, UPCAST=a.device.type == "cpu", INPUT_PRECISION=input_precision(a.dtype),
        num_warps=plan.num_warps, num_stages=plan.num_stages)
    da = da[0] if len(da) == 1 else da.sum(0)
    return da, (db if atomic_db else None), dscale.sum(), dbias.sum()


def sigmoid_loss_bwd(a, b, scale, bias, grad, positive_offset=0, *, deterministic=None):
    """Gradients of grad · Σ_ij softplus(−z_ij·(s·a_i·b_j + bias)) for one block.

    Args:
        a, b, scale, bias, positive_offset: as in ``sigmoid_loss_fwd``.
        grad: 1-element tensor c, the weight of the block's summed loss (grad_out / M_global for
            OpenCLIP's SigLipLoss).
        deterministic: True → bitwise reproducible db (a second launch: 4 backward matmuls);
            False → db by fp32 atomics (3 matmuls); None → ``torch.are_deterministic_algorithms_enabled()``.
    Returns:
        (da, db, dscale, dbias): (M, d), (N, d) float32 and 0-d float32 tensors; dscale is the
        gradient w.r.t. s (multiply by s for logit_scale).
    """
    a, b = check_features(a, b)
    dev = a.device
    scale, bias = check_scalar("scale", scale, dev), check_scalar("bias", bias, dev)
    grad = check_scalar("grad", grad, dev)
    offset, has_pos = _check_offset(positive_offset)
    (m, d), n = a.shape, b.shape[0]
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    if m == 0 or n == 0:
        zero = torch.zeros((), device=dev)
        return torch.zeros(m, d, device=dev), torch.zeros(n, d, device=dev), zero, zero.clone()
    da, db, dscale, dbias = _bwd_launch(a, b, scale, bias, offset, has_pos, atomic_db=not deterministic)
    if deterministic:
        db, _, _, _ = _bwd_launch(b, a, scale, bias, -offset, has_pos, atomic_db=False)
    c = -grad[0]
    return da.mul_(c), db.mul_(c), dscale * c, dbias * c


def aot_launches():
    """Representative launcher calls for the AOT compile, on ``meta`` tensors (nothing allocated or run):
    the shapes of ``contrastive_loss.aot_launches`` (a CLIP batch, the config classes, an odd block),
    with the positives on the diagonal or absent (the distributed negatives-only blocks), backward with
    atomic and deterministic db."""
    meta = dict(device="meta")
    one = torch.empty(1, **meta)
    for dtype, ty, wrap in aot_launch_variants():
        shapes = aot_launch_shapes(dtype)
        for m, n, d, every_variant in shapes:
            a, b = torch.empty(m, d, dtype=dtype, **meta), torch.empty(n, d, dtype=dtype, **meta)
            tag = f"{ty} {m}x{n} d={d}"
            for pos in ((0, None) if every_variant else (0,)):
                yield f"{tag} fwd{' pos' if pos is not None else ''}", wrap(sigmoid_loss_fwd), (a, b, one, one, pos), {}
                for det in ((False, True) if every_variant else (False,)):
                    yield (f"{tag} bwd {'det' if det else 'atomic'}{' pos' if pos is not None else ''}",
                           wrap(sigmoid_loss_bwd), (a, b, one, one, one, pos), {"deterministic": det})


def aot_specs():
    """Every distinct binary the representative calls of ``aot_launches`` make the JIT build."""
    return _aot.specs_from_launches(aot_launches())
