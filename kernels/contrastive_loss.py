"""Triton kernels for the chunked (tile-wise) CLIP contrastive loss: each logit tile is computed once.

Math. For one rectangular block a (M, d), b (N, d) and a scalar ``scale`` (s = exp(logit_scale)):

    S = s · a · bᵀ                                   (M, N), never materialised
    lse_row_i = log Σ_j exp(S_ij)    (over this block's N columns)
    lse_col_j = log Σ_i exp(S_ij)    (over this block's M rows)

The symmetric CLIP loss ½·(mean_i(lse_row_i − S_ii) + mean_j(lse_col_j − S_jj)) is assembled by the ops
layer (``clipfast.ops.contrastive_loss``), which also owns the diagonal and d(scale). Given the GLOBAL
LSEs and per-row/column coefficients (``coef = grad_out · 0.5 / N`` for the plain loss), the backward is

    P_ij = coef_row_i · exp(S_ij − lse_row_i) + coef_col_j · exp(S_ij − lse_col_j)
    da = s · P · b        (M, d)        db = s · Pᵀ · a        (N, d)

Algorithm.

* Forward (``_contrastive_loss_fwd_kernel``): grid (row groups, column splits) from
  ``_tiles.row_groups``. A program walks the row blocks of its group (BLOCK_M rows each) one after the
  other, and for each the column tiles of its split; each S tile is built with a loop over d in BLOCK_D
  chunks (``tl.dot``, fp32 accumulation) and used for BOTH directions: the row LSE with an online max
  (kept in registers across the split's tiles, stored once per row block) and the column (max, Σexp) of
  the tile, merged into the group's column partial (a read-modify-write of columns only this program
  owns). Partials live in fp32 buffers (splits, M) and (groups, N), in base-2 units (the kernel works
  with exp2 and S·log2(e)). ``_contrastive_loss_lse_kernel`` then merges the partials of each row/column
  in a fixed order, so the LSEs are bitwise deterministic. One N²d matmul; the partials' traffic is
  16 bytes per row and column of a tile, < 1 % of its feature reads at d ≥ 64.
* Backward (``_contrastive_loss_bwd_kernel``): same grid; each S tile is recomputed once from a and b
  and turned into P with the saved LSEs, then a second loop over d chunks adds P·b[:, chunk] into this
  program's rows of da (read-modify-write of rows only this program owns: deterministic) and, with
  ATOMIC_DB, Pᵀ·a[:, chunk] into db with fp32 atomics. The positives' −c term is applied only in the
  tiles the positive diagonal crosses. When few row blocks split the columns (``_tiles.bwd_plan``), the
  splits share da rows: with atomic db they add into them by fp32 atomics too (no partials; BLOCK_D 16,
  which keeps the 16-bit 128×128 tile within 255 registers), deterministic launches write separate
  partials (splits, M, d) that the launcher sums in a fixed order.

Determinism of db. The 4-matmul floor (1 forward + 3 backward) needs a reduction of db over row blocks.
``deterministic=False`` (the default unless ``torch.use_deterministic_algorithms(True)``) does it with
fp32 ``atomic_add``: 3 backward matmuls, but the summation order of db varies between runs, so db is not
bitwise reproducible (last-bit differences, like FlashAttention's dq). ``deterministic=True`` computes
db with a second launch of the same kernel on the transposed problem (b, a, lse_col, lse_row, coef_col,
coef_row): 4 backward matmuls, bitwise reproducible. Per-row-block db partials would be deterministic with
3 matmuls but cost (M/BLOCK_M)·N·d·4 bytes (17 GB at M = N = 32k, d = 512), so they are not offered.

Precision. fp16/bf16 inputs go to the tensor cores as they are, with fp32 accumulation; P is cast to the
input dtype for the backward dots after being divided by ``norm = max|coef|`` (P/norm ∈ [−2, 2], so fp16
does not flush the ~0.5/N-sized values to subnormals) and multiplied by s; the launcher multiplies the
result back by ``norm``. fp32 inputs use ``input_precision="ieee"`` (full fp32 products: TF32 would round
the features to 10 mantissa bits, an S error ≈ 0.05 at s = 100) unless the user allows TF32 for fp32
matmuls (``torch.backends.cuda.matmul.fp32_precision = "tf32"`` or the legacy ``allow_tf32``): then
``"tf32x3"``, three TF32 tensor-core products per dot at ≈ fp32 accuracy (``_common.input_precision``);
or cast features to bf16 for full tensor-core speed. Under the Triton interpreter (CPU tensors) operands
are upcast to fp32 right after each load (bf16 arithmetic is broken there; the interpreter's dots ignore
the input precision); fp16/bf16 → fp32 is exact and their products are exact in fp32, so this computes
what the tensor cores compute, except that P is not rounded to the input dtype.

Stability: all exponentials are exp2(x − running max) ≤ 1, so any ``scale`` (e.g. 100) and any logits
that fit fp32 give finite LSEs; exp underflow only drops terms < 2⁻¹²⁶ of the row/column maximum.

Configs and bytes per FLOP (``_CONFIGS``; ``_tiles.tile_bytes_per_flop``, also in ``make aot-report``).
Traffic model per (BLOCK_M × BLOCK_N) tile, per unit of d, e = bytes per input element, between the SMs and
L2/HBM: forward reads a and b rows once, (BM + BN)·e for 2·BM·BN FLOP; backward (atomic db) reads a and
b twice (S recompute, then the gradient dots), reads and writes fp32 da rows and sends fp32 db atomics,
2e(BM + BN) + 8·BM + 4·BN for 6·BM·BN FLOP (3 dots); each deterministic launch reads a once, b twice
and da twice, e·BM + 2e·BN + 8·BM for 4·BM·BN FLOP. Every config compiles with no spills and no stack
frame for sm_80 and sm_90 with the JIT's specialisation:

    kind / dtype                 tiles (M×N×D)  warps stages  B/FLOP (atomic db | det db)
    fwd  fp16/bf16               128×64×32/16   8     3       0.0234
    bwd  fp16/bf16, d % 32 == 0  128×128×32     8     1       0.0260 | 0.0273
         (column splits, atomic da: BLOCK_D 16; same tiles, ≤ that B/FLOP: da atomics replace its read)
    bwd  fp16/bf16, other d      64×64×16       4     1       0.0521 | 0.0547
    fwd  fp32                    64×64×16       4     2       0.0625
    bwd  fp32                    64×64×16       8     1       0.0729 | 0.0781

(fp32 runs ``ieee`` FMA dots, not tensor cores: compute-bound far below these bandwidths; its ``tf32x3``
variant compiles to TF32 MMAs with the same tiles, no spills.) Larger
tiles/chunks spill (128×128 at d % 32 ≠ 0, BLOCK_D 64 in the 16-bit backward, BLOCK_D 32 in fp32).

Memory besides inputs and outputs, O(M + N): the forward's partials, 8·(groups·N + splits·M) bytes with
groups·splits ≈ 512 programs and groups ≈ √(512·M/N) (``_tiles.row_groups``): 11.5 MiB at M = N = 32768,
92 MiB at 262144 (it was (M/BLOCK_M)·N·8 = 4 GiB there before row groups). The backward's gradients are
fp32 (M·d·4 and N·d·4: da rows are accumulated across column tiles, db by atomics); beside them it
allocates the d(scale) partials and the positives' column weights, O(M + N): 4 MiB at 262144 (5 MiB
deterministic; a deterministic launch with M < 256·BLOCK_M rows also has da partials (splits, M, d),
splits·M ≤ 256·BLOCK_M + M rows, independent of N: 64 MiB at M = N = 4096, d = 512). These are the
launchers' own allocations, counted by ``_launcher_memory.launcher_memory`` on meta tensors
(``test_contrastive_loss_kernel.py::test_launcher_memory_is_linear``).

Limits: 2-D inputs with unit stride along d (others are made contiguous); d ≥ 1 (tuned for 64…1280);
M·d and N·d < 2⁶³ (row offsets are int64); one CUDA device or CPU under ``TRITON_INTERPRET=1``.
"""

import torch
import triton
import triton.language as tl

from . import _aot
from ._common import check_scalar, input_precision
from ._tiles import aot_bytes_per_flop  # noqa: F401 (the AOT report's model of this module)
from ._tiles import accumulate_tile_grads, column_tile, dot_tile, split_span
from ._tiles import aot_launch_shapes, aot_launch_variants, bwd_plan, check_features, config, row_groups

_LSE_BLOCK = 256
_LSE_WARPS, _LSE_STAGES = 4, 1


@triton.jit
def _contrastive_loss_fwd_kernel(
    a_ptr, b_ptr, scale_ptr,
    row_max_ptr, row_sum_ptr,  # (n_splits, M) fp32: partial row max / Σexp2 (base 2) per column split
    col_max_ptr, col_sum_ptr,  # (n_groups, N) fp32: partial column max / Σexp2 per group of row blocks
    pos_ptr,  # (M,) fp32, zero-initialised: a_i·b_{i + pos_offset} (written when HAS_POS)
    M, N, D,
    stride_am, stride_bn,  # row strides of a and b (elements); stride along d is 1
    blocks_per_group,  # row blocks each program walks
    tiles_per_split,  # column tiles each program walks
    pos_offset,  # column of row 0's positive
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_POS: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    pid_g = tl.program_id(0)
    pid_s = tl.program_id(1)
    scale2 = tl.load(scale_ptr).to(tl.float32) * 1.4426950408889634  # s · log2(e)
    offs_d = tl.arange(0, BLOCK_D)
    n_start, n_end = split_span(pid_s, tiles_per_split, N, BLOCK_N)
    rb_start = pid_g * blocks_per_group
    rb_end = tl.minimum(tl.cdiv(M, BLOCK_M), rb_start + blocks_per_group)
    col_part = pid_g.to(tl.int64) * N  # this group's row of the column partials
    for rb in range(rb_start, rb_end):
        offs_m = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        row_valid = offs_m < M
        a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
        merge_cols = rb > rb_start  # the group's earlier row blocks left partials of these columns
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for n0 in range(n_start, n_end, BLOCK_N):
            offs_n, col_valid, b_rows = column_tile(b_ptr, n0, N, stride_bn, BLOCK_N)
            acc = dot_tile(a_rows, b_rows, row_valid, col_valid, offs_d, D,  # a[rows] · b[cols]ᵀ
                           BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, INPUT_PRECISION)
            if HAS_POS:  # each row's positive lies in exactly one column tile: one store per row
                pos_col = offs_m + pos_offset
                has = row_valid & (pos_col >= n0) & (pos_col < n0 + BLOCK_N) & (pos_col < N)
                pos = tl.sum(tl.where(offs_n[None, :] == pos_col[:, None], acc, 0.0), axis=1)
                tl.store(pos_ptr + offs_m, pos, mask=has)
            s2 = acc * scale2
            # Rows: online max over the column tiles (every tile has ≥ 1 valid column, so m_new is finite).
            s_r = tl.where(col_valid[None, :], s2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s_r, axis=1))
            l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s_r - m_new[:, None]), axis=1)
            m_i = m_new
            # Columns: this row block's (max, Σexp2) of each column (≥ 1 valid row, so c_max is finite),
            # merged into the group's partial, which only this program writes (read-modify-write).
            s_c = tl.where(row_valid[:, None], s2, float("-inf"))
            c_max = tl.max(s_c, axis=0)
            c_sum = tl.sum(tl.exp2(s_c - c_max[None, :]), axis=0)
            col_ptrs = col_part + offs_n
            if merge_cols:
                p_max = tl.load(col_max_ptr + col_ptrs, mask=col_valid, other=0.0)
                p_sum = tl.load(col_sum_ptr + col_ptrs, mask=col_valid, other=0.0)
                g_max = tl.maximum(p_max, c_max)
                c_sum = c_sum * tl.exp2(c_max - g_max) + p_sum * tl.exp2(p_max - g_max)
                c_max = g_max
            tl.store(col_max_ptr + col_ptrs, c_max, mask=col_valid)
            tl.store(col_sum_ptr + col_ptrs, c_sum, mask=col_valid)
        row_off = pid_s.to(tl.int64) * M + offs_m
        tl.store(row_max_ptr + row_off, m_i, mask=row_valid)
        tl.store(row_sum_ptr + row_off, l_i, mask=row_valid)
        # The next row block re-reads column partials other threads of this program stored.
        tl.debug_barrier()


@triton.jit
def _contrastive_loss_lse_kernel(
    max_ptr, sum_ptr,  # (K, L) fp32 partials in base 2
    out_ptr,  # (L,) fp32 natural-log LSE
    K, L,
    BLOCK: tl.constexpr,
):
    """out_l = ln2 · (m + log2 Σ_k sum_kl · 2^(max_kl − m)), merged over k = 0, 1, … in this order."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < L
    m = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK,), dtype=tl.float32)
    max_ptrs = max_ptr + offs
    sum_ptrs = sum_ptr + offs
    for _ in range(0, K):
        pm = tl.load(max_ptrs, mask=valid, other=0.0).to(tl.float32)
        ps = tl.load(sum_ptrs, mask=valid, other=1.0).to(tl.float32)
        m_new = tl.maximum(m, pm)
        s = s * tl.exp2(m - m_new) + ps * tl.exp2(pm - m_new)
        m = m_new
        max_ptrs += L
        sum_ptrs += L
    tl.store(out_ptr + offs, (m + tl.log2(s)) * 0.6931471805599453, mask=valid)


@triton.jit
def _contrastive_loss_bwd_kernel(
    a_ptr, b_ptr, scale_ptr,
    norm_ptr,  # () fp32: max|coef|, divided out of P before the low-precision cast
    lse_row_ptr, lse_col_ptr, coef_row_ptr, coef_col_ptr,  # (M,), (N,), (M,), (N,) fp32
    coef_pos_ptr,  # (M,) fp32: weight c_i of row i's positive (i, i + pos_offset), used when HAS_POS
    da_ptr,  # (n_splits, M, D) fp32, zero-initialised: Σ over this split's columns of s·G/norm·b
    db_ptr,  # (N, D) fp32, zero-initialised; atomically accumulated when ATOMIC_DB
    dscale_ptr,  # (n_splits, M) fp32: Σ over this split's columns of G_ij/norm · a_i·b_j
    M, N, D,
    stride_am, stride_bn,
    tiles_per_split,
    pos_offset,  # column of row 0's positive (used when HAS_POS)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_POS: tl.constexpr, ATOMIC_DA: tl.constexpr, ATOMIC_DB: tl.constexpr, UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    LOG2E: tl.constexpr = 1.4426950408889634
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    inv_norm = 1.0 / tl.load(norm_ptr).to(tl.float32)
    scale2 = scale * LOG2E
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = offs_m < M
    offs_d = tl.arange(0, BLOCK_D)
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    if ATOMIC_DA:  # one (M, D) da that the column splits share
        da_rows = da_ptr + offs_m.to(tl.int64)[:, None] * D
    else:  # one (M, D) partial per column split
        da_rows = da_ptr + (pid_s.to(tl.int64) * M + offs_m.to(tl.int64))[:, None] * D
    # Padded rows/columns get lse = +inf and coef = 0, so their P is exactly 0.
    lr2 = tl.load(lse_row_ptr + offs_m, mask=row_valid, other=float("inf")).to(tl.float32) * LOG2E
    cr = tl.load(coef_row_ptr + offs_m, mask=row_valid, other=0.0).to(tl.float32) * inv_norm
    if HAS_POS:
        cp = tl.load(coef_pos_ptr + offs_m, mask=row_valid, other=0.0).to(tl.float32) * inv_norm
        pos_col = offs_m + pos_offset
    dscale = tl.zeros((BLOCK_M,), dtype=tl.float32)

    n_start, n_end = split_span(pid_s, tiles_per_split, N, BLOCK_N)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n, col_valid, b_rows = column_tile(b_ptr, n0, N, stride_bn, BLOCK_N)
        acc = dot_tile(a_rows, b_rows, row_valid, col_valid, offs_d, D,  # a[rows] · b[cols]ᵀ
                       BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, INPUT_PRECISION)
        s2 = acc * scale2
        lc2 = tl.load(lse_col_ptr + offs_n, mask=col_valid, other=float("inf")).to(tl.float32) * LOG2E
        cc = tl.load(coef_col_ptr + offs_n, mask=col_valid, other=0.0).to(tl.float32) * inv_norm
        s2 = tl.where(row_valid[:, None] & col_valid[None, :], s2, float("-inf"))  # padding: P = 0
        g = cr[:, None] * tl.exp2(s2 - lr2[:, None]) + cc[None, :] * tl.exp2(s2 - lc2[None, :])
        if HAS_POS:  # G = P − c·[j = i + k], cancelling per element (as softmax − one-hot)
            first = pid_m * BLOCK_M + pos_offset  # positives of this row block: columns first … first + BM − 1
            if (n0 < first + BLOCK_M) & (n0 + BLOCK_N > first):  # only tiles the positives cross
                g -= tl.where(offs_n[None, :] == pos_col[:, None], cp[:, None], 0.0)
        dscale += tl.sum(g * acc, axis=1)  # d scale without dividing by s (finite at s = 0)
        p = g * scale
        if not UPCAST:
            p = p.to(a_ptr.dtype.element_ty)
        accumulate_tile_grads(p, a_rows, b_rows, da_rows, db_ptr, offs_n, row_valid, col_valid, offs_d, D,
                              BLOCK_D, ATOMIC_DA, ATOMIC_DB, UPCAST, INPUT_PRECISION)
        # The next tile re-reads da rows other threads of this program stored.
        tl.debug_barrier()
    tl.store(dscale_ptr + pid_s.to(tl.int64) * M + offs_m, dscale, mask=row_valid)


# ---------------------------------------------------------------------------------------------------
def _check_vector(name, t, n, device):
    if not isinstance(t, torch.Tensor) or t.shape != (n,):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name}: expected shape ({n},), got {got}")
    if t.device != device:
        raise ValueError(f"{name}: expected device {device}, got {t.device}")
    return t.to(torch.float32).contiguous()


def _merge_lse(part_max, part_sum):
    """Fixed-order merge of (K, L) base-2 partials into an (L,) natural-log LSE."""
    k, length = part_max.shape
    out = torch.empty(length, device=part_max.device, dtype=torch.float32)
    _contrastive_loss_lse_kernel[(triton.cdiv(length, _LSE_BLOCK),)](
        part_max, part_sum, out, k, length, BLOCK=_LSE_BLOCK, num_warps=_LSE_WARPS, num_stages=_LSE_STAGES)
    return out


def contrastive_loss_fwd(a, b, scale, positive_offset=None):
    """Row and column log-sum-exp of S = scale · a · bᵀ over this block, each S tile computed once.

    Args:
        a: (M, d) features (rows of S), float32/float16/bfloat16; any row stride.
        b: (N, d) features (columns of S), same dtype and device as ``a``.
        scale: 1-element tensor, s = exp(logit_scale); read on the device (no host sync).
        positive_offset: None, or k: also return the positives' dots a_i·b_{i+k} (from the same tiles).
    Returns:
        (lse_row, lse_col): (M,) and (N,) float32; lse_row_i = log Σ_j exp(S_ij) over the N columns,
        lse_col_j = log Σ_i exp(S_ij) over the M rows. Bitwise deterministic. With ``positive_offset``,
        a third (M,) float32 tensor pos_i = a_i·b_{i+k} (unscaled; 0 where i + k is outside [0, N)).
    """
    a, b = check_features(a, b)
    scale = check_scalar("scale", scale, a.device)
    has_pos = positive_offset is not None
    if has_pos and (isinstance(positive_offset, bool) or not isinstance(positive_offset, int)):
        raise TypeError(f"positive_offset: expected an int or None, got {type(positive_offset).__name__}")
    (m, d), n = a.shape, b.shape[0]
    dev = a.device
    pos = torch.zeros(m, device=dev, dtype=torch.float32) if has_pos else None
    if m == 0 or n == 0:
        out = (torch.full((m,), float("-inf"), device=dev), torch.full((n,), float("-inf"), device=dev))
        return (*out, pos) if has_pos else out
    bm, bn, bd, warps, stages = config("fwd", a.dtype, d)
    n_groups, blocks_per_group, n_splits, tiles_per_split = row_groups(m, n, bm, bn)
    row_max = torch.empty(n_splits, m, device=dev, dtype=torch.float32)
    row_sum = torch.empty_like(row_max)
    col_max = torch.empty(n_groups, n, device=dev, dtype=torch.float32)
    col_sum = torch.empty_like(col_max)
    _contrastive_loss_fwd_kernel[(n_groups, n_splits)](
        a, b, scale, row_max, row_sum, col_max, col_sum, pos if has_pos else row_max, m, n, d, a.stride(0), b.stride(0), blocks_per_group,
        tiles_per_split, positive_offset or 0, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, HAS_POS=has_pos, UPCAST=dev.type == "cpu",
        INPUT_PRECISION=input_precision(a.dtype), num_warps=warps, num_stages=stages)
    out = (_merge_lse(row_max, row_sum), _merge_lse(col_max, col_sum))
    return (*out, pos) if has_pos else out


def _bwd_launch(a, b, scale, norm, lse_row, lse_col, coef_row, coef_col, coef_pos, pos_offset, atomic_db):
    """(da, db or None, dscale partials (n_splits, M)), all divided by ``norm``; db only with ``atomic_db``."""
    (m, d), n = a.shape, b.shape[0]
    plan = bwd_plan(m, n, d, a.dtype, atomic_db)
    n_splits = plan.n_splits
    da = torch.zeros(1 if plan.atomic_da else n_splits, m, d, device=a.device, dtype=torch.float32)
    db = torch.zeros(n, d, device=a.device, dtype=torch.float32) if atomic_db else da
    dscale = torch.empty(n_splits, m, device=a.device, dtype=torch.float32)
    has_pos = coef_pos is not None
    _contrastive_loss_bwd_kernel[(plan.n_row_blocks, n_splits)](
        a, b, scale, norm, lse_row, lse_col, coef_row, coef_col, coef_pos if has_pos else coef_row, da, db, dscale,
        m, n, d, a.stride(0), b.stride(0), plan.tiles_per_split, pos_offset,
        BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_D=plan.block_d, HAS_POS=has_pos, ATOMIC_DA=plan.atomic_da,
        ATOMIC_DB=atomic_db, UPCAST=a.device.type == "cpu", INPUT_PRECISION=input_precision(a.dtype),
        num_warps=plan.num_warps, num_stages=plan.num_stages)
    da = da[0] if len(da) == 1 else da.sum(0)
    return da, (db if atomic_db else None), dscale


def _positives(positive, m, n, device):
    """(offset, per-row weights (M,) fp32, the same as per-column weights (N,) for the transposed
    launch) of ``positive = (k, c)``, c a number, 0-d or (M,) tensor; (0, None, None) for None."""
    if positive is None:
        return 0, None, None
    k, c = positive
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"positive: expected (int offset, weights), got offset {k!r}")
    c = torch.as_tensor(c, dtype=torch.float32, device=device)
    if c.dim() == 0:
        c = c.expand(m)
    c = _check_vector("positive weights", c, m, device)
    c_col = torch.zeros(n, dtype=torch.float32, device=device)
    i0, i1 = max(0, -k), min(m, n - k)
    if i1 > i0:
        c_col[i0 + k:i1 + k] = c[i0:i1]
    return k, c, c_col


def contrastive_loss_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col, *, positive=None, deterministic=None):
    """Gradients of L = Σ_i coef_row_i·lse_row_i + Σ_j coef_col_j·lse_col_j − Σ_i c_i·S_{i,i+k} w.r.t. a, b
    and scale, with the LSEs held fixed.

    With G_ij = coef_row_i·exp(S_ij − lse_row_i) + coef_col_j·exp(S_ij − lse_col_j) − c_i·[j = i + k] and
    S = scale·a·bᵀ: da = scale · G · b, db = scale · Gᵀ · a, dscale = Σ_ij G_ij·a_i·b_j (computed from
    a·bᵀ, never divided by scale: finite at scale = 0). Each S tile is recomputed once per launch.

    Args:
        a: (M, d), b: (N, d) features as in ``contrastive_loss_fwd``.
        scale: 1-element tensor, s = exp(logit_scale).
        lse_row: (M,) GLOBAL row LSEs of these rows; lse_col: (N,) GLOBAL column LSEs of these columns.
        coef_row: (M,), coef_col: (N,) weights (grad_out · 0.5 / N_global for the plain CLIP loss).
        positive: None, or (k, c): the positives (i, i + k) enter with weight −c_i (c a number, a 0-d or
            an (M,) tensor; grad_out / N for the CLIP loss's diagonal, k = 0).
        deterministic: True → bitwise reproducible db (a second launch: 4 backward matmuls);
            False → db by fp32 atomics (3 backward matmuls, last-bit run-to-run differences in db);
            None → ``torch.are_deterministic_algorithms_enabled()``.
    Returns:
        (da, db, dscale): (M, d), (N, d) float32 and a 0-d float32 tensor. No host synchronisation.
    """
    a, b = check_features(a, b)
    dev = a.device
    scale = check_scalar("scale", scale, dev)
    (m, d), n = a.shape, b.shape[0]
    lse_row, coef_row = (_check_vector(k, t, m, dev) for k, t in (("lse_row", lse_row), ("coef_row", coef_row)))
    lse_col, coef_col = (_check_vector(k, t, n, dev) for k, t in (("lse_col", lse_col), ("coef_col", coef_col)))
    offset, c_row, c_col = _positives(positive, m, n, dev)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    if m == 0 or n == 0:
        return torch.zeros(m, d, device=dev), torch.zeros(n, d, device=dev), torch.zeros((), device=dev)
    norm = torch.maximum(coef_row.abs().max(), coef_col.abs().max())
    if c_row is not None:
        norm = torch.maximum(norm, c_row.abs().max())
    norm = torch.where(norm > 0, norm, torch.ones_like(norm)).reshape(1)
    da, db, dscale = _bwd_launch(a, b, scale, norm, lse_row, lse_col, coef_row, coef_col, c_row, offset,
                                 atomic_db=not deterministic)
    if deterministic:
        db, _, _ = _bwd_launch(b, a, scale, norm, lse_col, lse_row, coef_col, coef_row, c_col, -offset,
                               atomic_db=False)
    dscale = (dscale.double().sum() * norm[0]).float()  # fixed order; fp64: blocks of a ring cancel
    return da.mul_(norm), db.mul_(norm), dscale


def aot_launches():
    """Representative launcher calls (label, launcher, args, kwargs) for the AOT compile, on ``meta``
    tensors (nothing is allocated or run): a CLIP batch (N = 32768, d = 512: sizes and strides divisible
    by 16), the 16-bit classes d = 96 (BLOCK_D 32, split columns) and d = 80 (d % 32 ≠ 0: the odd-d
    backward), an odd block (1000 × 777, d = 72: nothing divisible by 16) and for fp16 a small one (256²,
    one column tile per program); forward with and without positives, backward with atomic and
    deterministic db."""
    meta = dict(device="meta")
    scale = torch.empty(1, **meta)
    for dtype, ty, wrap in aot_launch_variants():
        shapes = aot_launch_shapes(dtype)
        if dtype == torch.float16:
            shapes.append((256, 256, 512, False))
        for m, n, d, every_variant in shapes:
            a, b = torch.empty(m, d, dtype=dtype, **meta), torch.empty(n, d, dtype=dtype, **meta)
            vec_m, vec_n = torch.empty(m, **meta), torch.empty(n, **meta)
            tag = f"{ty} {m}x{n} d={d}"
            for pos in ((0, None) if every_variant else (0,)):
                yield f"{tag} fwd{' pos' if pos is not None else ''}", wrap(contrastive_loss_fwd), (a, b, scale), \
                    {"positive_offset": pos}
                for det in ((False, True) if every_variant else (False,)):
                    yield (f"{tag} bwd {'det' if det else 'atomic'}{' pos' if pos is not None else ''}",
                           wrap(contrastive_loss_bwd), (a, b, scale, vec_m, vec_n, vec_m, vec_n),
                           {"positive": None if pos is None else (pos, vec_m), "deterministic": det})


def aot_specs():
    """Every distinct binary the representative calls of ``aot_launches`` make the JIT build."""
    return _aot.specs_from_launches(aot_launches())
