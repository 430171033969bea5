"""Tile building blocks shared by the logit-tile kernels (``contrastive_loss``, ``sigmoid_loss``).

Both losses walk (BLOCK_M × BLOCK_N) tiles of a·bᵀ with d looped in BLOCK_D chunks; these ``@triton.jit``
helpers are inlined into their kernels. Every load and store is masked (rows, columns and the d tail).
The host side (``CONFIGS``/``config``, ``splits``, ``check_features``) is the launch table and checks both
losses share. ``tile_bytes_per_flop`` is the tiles' memory-traffic model (the B/FLOP of every config, in the kernel
docstrings and the AOT report).
"""
import collections
import functools

import torch
import triton
import triton.language as tl

from ._common import DTYPE_NAMES, with_fp32_precision


@triton.jit
def split_span(pid_s, tiles_per_split, N, BLOCK_N: tl.constexpr):
    """[n_start, n_end): the columns of column split ``pid_s`` (``tiles_per_split`` tiles of BLOCK_N)."""
    n_start = pid_s * tiles_per_split * BLOCK_N
    return n_start, tl.minimum(N, n_start + tiles_per_split * BLOCK_N)


@triton.jit
def column_tile(b_ptr, n0, N, stride_bn, BLOCK_N: tl.constexpr):
    """(offs_n, col_valid, b_rows) of the column tile starting at n0: its column indices, which are < N, and
    the (BLOCK_N, 1) pointers to their rows of b."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    return offs_n, offs_n < N, b_ptr + offs_n.to(tl.int64)[:, None] * stride_bn


@triton.jit
def dot_tile(a_rows, b_rows, row_valid, col_valid, offs_d, D,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK_N) fp32 tile a[rows] · b[cols]ᵀ; ``a_rows``/``b_rows`` point at each row's start
    ((BLOCK, 1) pointers, unit stride along d). UPCAST: operands to fp32 after loading (interpreter)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, D, BLOCK_D):
        dk = k + offs_d
        d_valid = dk < D
        a = tl.load(a_rows + dk[None, :], mask=row_valid[:, None] & d_valid[None, :], other=0.0)
        b = tl.load(b_rows + dk[None, :], mask=col_valid[:, None] & d_valid[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def accumulate_tile_grads(p, a_rows, b_rows, da_rows, db_ptr, offs_n, row_valid, col_valid, offs_d, D,
                          BLOCK_D: tl.constexpr, ATOMIC_DA: tl.constexpr, ATOMIC_DB: tl.constexpr,
                          UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """da[rows] += p · b[cols] (fp32 rows this program owns: read-modify-write; with ATOMIC_DA, rows that
    other column splits share: fp32 atomics) and, with ATOMIC_DB, db[cols] += pᵀ · a[rows] by fp32
    atomics; d in BLOCK_D chunks. p: (BLOCK_M, BLOCK_N) tile of the loss's dS; db is (N, D) contiguous."""
    for k in range(0, D, BLOCK_D):
        dk = k + offs_d
        d_valid = dk < D
        b = tl.load(b_rows + dk[None, :], mask=col_valid[:, None] & d_valid[None, :], other=0.0)
        if UPCAST:
            b = b.to(tl.float32)
        da_mask = row_valid[:, None] & d_valid[None, :]
        if ATOMIC_DA:
            tl.atomic_add(da_rows + dk[None, :], tl.dot(p, b, input_precision=INPUT_PRECISION), mask=da_mask,
                          sem="relaxed")
        else:
            da = tl.load(da_rows + dk[None, :], mask=da_mask, other=0.0)
            da = tl.dot(p, b, da, input_precision=INPUT_PRECISION)
            tl.store(da_rows + dk[None, :], da, mask=da_mask)
        if ATOMIC_DB:
            a = tl.load(a_rows + dk[None, :], mask=da_mask, other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
            ddb = tl.dot(tl.trans(p), a, input_precision=INPUT_PRECISION)
            db_ptrs = db_ptr + offs_n.to(tl.int64)[:, None] * D + dk[None, :]
            tl.atomic_add(db_ptrs, ddb, mask=col_valid[:, None] & d_valid[None, :], sem="relaxed")


def tile_bytes_per_flop(kind, block_m, block_n, elem_bytes, atomic_db=True):
    """Bytes moved between the SMs and L2/HBM per FLOP by one (block_m × block_n) logit tile (the
    traffic model of the ``contrastive_loss`` docstring; independent of d, partial/LSE vectors neglected)."""
    if kind == "fwd":  # a and b rows in; one dot
        return (block_m + block_n) * elem_bytes / (2 * block_m * block_n)
    if atomic_db:  # a, b twice each; da fp32 read + write; db fp32 atomics; three dots
        return (2 * elem_bytes * (block_m + block_n) + 8 * block_m + 4 * block_n) / (6 * block_m * block_n)
    # one of the two deterministic launches: a once, b twice, da fp32 read + write; two dots
    return (elem_bytes * block_m + 2 * elem_bytes * block_n + 8 * block_m) / (4 * block_m * block_n)


def aot_bytes_per_flop(spec):
    """``tile_bytes_per_flop`` of an AOT spec of a logit-tile kernel (None for other kernels, e.g. the LSE
    merge): the B/FLOP column of ``make aot-report`` for ``contrastive_loss`` and ``sigmoid_loss``."""
    c = spec.constexprs
    if "BLOCK_N" not in c:
        return None
    elem = 4 if spec.signature["a_ptr"] == "*fp32" else 2
    kind = "bwd" if "ATOMIC_DB" in c else "fwd"
    return tile_bytes_per_flop(kind, c["BLOCK_M"], c["BLOCK_N"], elem, c.get("ATOMIC_DB", True))


@triton.jit
def softplus(y):
    """softplus(y) = max(y, 0) + log1p(e), e = exp(−|y|), with log1p accurate to a few ulps at any e:
    log(u)·e/(u − 1), u = fl(1 + e) (Goldberg's log1p; the rounding of 1 + e cancels), and e itself where
    u rounds to 1 (e < 2⁻²⁴). log(1 + e) would lose up to 1 % per term at SigLIP's bias −10 and drop
    every term below 2⁻²⁴."""
    e = tl.exp(-tl.abs(y))
    u = 1.0 + e
    um1 = u - 1.0
    tiny = um1 == 0.0
    return tl.maximum(y, 0.0) + tl.where(tiny, e, tl.log(u) * (e / tl.where(tiny, 1.0, um1)))


# ---- host side: the config table both losses launch with (deterministic; no autotune: it fails under the
# interpreter), the column split heuristic, the input checks.

TARGET_PROGRAMS = 512  # programs a launch aims at (enough CTAs for every SM of an H100)

def block_d(d, dtype):
    """Chunk of d per dot: 32 for fp16/bf16 when 32 divides d (every CLIP width: 512, 640, 768, 1024,
    1280), else 16 (fp32: always 16); a d that is not a multiple of 16 gets a masked tail chunk. Larger
    chunks spill registers in the backward (AOT report)."""
    return 32 if dtype != torch.float32 and d % 32 == 0 else 16


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per (kind, case); every row compiles for sm_80 and sm_90 with
# no spills and no stack frame (``make aot-report``). Bytes per FLOP of each: ``_tiles.tile_bytes_per_flop``.
CONFIGS = {
    ("fwd", "fp32"): (64, 64, 4, 2),
    ("bwd", "fp32"): (64, 64, 8, 1),  # 4 warps spill (ieee FMA dots hold p twice)
    ("fwd", "16-bit"): (128, 64, 8, 3),
    ("bwd", "16-bit"): (128, 128, 8, 1),  # d % 32 == 0: ≈ 0.026 B/FLOP (the 64×64 tiles: ≈ 0.052)
    ("bwd", "16-bit odd d"): (64, 64, 4, 1),  # d % 32 != 0: 128×128 spills there
}


def config(kind, dtype, d):
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages) for kernel ``kind`` ("fwd" or "bwd")."""
    case = "fp32" if dtype == torch.float32 else ("16-bit odd d" if kind == "bwd" and d % 32 else "16-bit")
    bm, bn, warps, stages = CONFIGS[(kind, case)]
    return bm, bn, block_d(d, dtype), warps, stages


BwdPlan = collections.namedtuple("BwdPlan", "block_m block_n block_d num_warps num_stages n_row_blocks n_splits "
                                              "tiles_per_split atomic_da")


def bwd_plan(m, n, d, dtype, atomic_db):
    """``BwdPlan`` of a loss backward launch on an (M, d) × (N, d) block: ``config("bwd")`` tiles, grid
    (n_row_blocks, n_splits). Column splits share da rows: with atomic db (``deterministic=False``) they
    add into one (M, d) da by fp32 atomics (``atomic_da``; BLOCK_D 16: at 32 the atomics' addresses spill
    the 16-bit 128 × 128 tile on sm_80), deterministic launches write per-split partials (n_splits, M, d)
    that the launcher sums in a fixed order."""
    bm, bn, bd, warps, stages = config("bwd", dtype, d)
    n_row_blocks = -(-m // bm)
    n_splits, tiles_per_split = splits(n_row_blocks, -(-n // bn), "bwd")
    atomic_da = atomic_db and n_splits > 1
    return BwdPlan(bm, bn, 16 if atomic_da else bd, warps, stages, n_row_blocks, n_splits, tiles_per_split, atomic_da)


def splits(n_row_blocks, n_col_tiles, kind="fwd"):
    """(n_splits, tiles_per_split): split the columns only when there are too few row blocks to fill
    the GPU; no split is empty. The backward aims at half the programs: it runs 1 CTA per SM (AOT
    report) and, in a deterministic launch, each extra split costs a (M, d) fp32 da partial (M = 32768,
    128-row blocks: 1 split)."""
    target = TARGET_PROGRAMS if kind == "fwd" else TARGET_PROGRAMS // 2
    want = max(1, min(n_col_tiles, -(-target // n_row_blocks)))
    tiles_per_split = -(-n_col_tiles // want)
    return -(-n_col_tiles // tiles_per_split), tiles_per_split


def row_groups(m, n, block_m, block_n):
    """(n_groups, blocks_per_group, n_splits, tiles_per_split): the contrastive forward's grid. A program
    walks ``blocks_per_group`` row blocks × ``tiles_per_split`` column tiles and merges its column
    partials across its row blocks, so the partials take 8·(n_groups·N + n_splits·M) bytes: O(N). For
    P ≈ TARGET_PROGRAMS programs (n_groups·n_splits = P) that sum is least at n_groups ≈ √(P·M/N):
    M = N = 32768 (128 × 64 tiles) → 22 groups × 24 splits, 11.5 MiB; M = N = 262144 → 23 × 23, 92 MiB
    (one group per row block, as before grouping: (M/128)·N·8 = 4 GiB at 262144)."""
    n_row_blocks, n_col_tiles = -(-m // block_m), -(-n // block_n)
    programs = min(TARGET_PROGRAMS, n_row_blocks * n_col_tiles)
    groups = min(n_row_blocks, max(1, round((programs * m / n) ** 0.5)))
    blocks_per_group = -(-n_row_blocks // groups)
    n_groups = -(-n_row_blocks // blocks_per_group)
    return (n_groups, blocks_per_group, *splits(n_groups, n_col_tiles))


def check_features(a, b):
    """(a, b) as the launchers take them: 2-D, one dtype/device/d, unit stride along d (copied if not)."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D tensor (rows, d), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}")
    if a.dtype != b.dtype:
        raise TypeError(f"a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same feature size d, got {a.shape[1]} and {b.shape[1]}")
    if a.device != b.device:
        raise ValueError(f"a and b must be on the same device, got {a.device} and {b.device}")
    return (a if a.stride(1) == 1 else a.contiguous()), (b if b.stride(1) == 1 else b.contiguous())


def aot_launch_variants():
    """(dtype, tag, wrap) for the losses' AOT launch lists: each dtype, fp32 twice (``ieee`` dots, and
    ``tf32x3`` with TF32 allowed: ``_common.input_precision``); ``wrap(launcher)`` runs it so."""
    for dtype, ty in DTYPE_NAMES.items():
        if dtype != torch.float32:
            yield dtype, ty, lambda fn: fn
            continue
        for value, tag in (("ieee", ty), ("tf32", f"{ty} tf32x3")):
            yield dtype, tag, functools.partial(with_fp32_precision, value)


def aot_launch_shapes(dtype):
    """The (M, N, d, every_variant) blocks both losses' ``aot_launches`` use: a CLIP batch (N = 32768, d = 512:
    sizes and strides divisible by 16), the 16-bit classes d = 96 (BLOCK_D 32; 4096 rows: column splits, so
    atomic da) and d = 80 (d % 32 != 0: the odd-d backward; 16384 rows: one split, and its transposed
    deterministic launch splits), and an odd block (1000 x 777, d = 72: nothing divisible by 16)."""
    shapes = [(32768, 32768, 512, True), (16384, 4096, 80, True), (1000, 777, 72, False)]
    if dtype != torch.float32:  # fp32 has one BLOCK_D and one config per kind
        shapes.insert(1, (4096, 4096, 96, True))
    return shapes
