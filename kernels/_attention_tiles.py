"""Tiles of the attention kernels (``kernels/attention.py``, ``kernels/attention_pool.py``): the launch table
of ``kernels/attention.py`` and the ``@triton.jit`` building blocks inlined into the kernels.

Resources (``python -m clipfast.kernels._aot``: the binaries the JIT builds for ``attention.aot_launches``,
CLIP's shapes with their 16-byte-aligned pointers and 16-divisible strides, and odd ones with neither): every
config the table picks compiles for sm_80 and sm_90 with 0 bytes of stack and 0 spills. Rejected for
stack/spills at some D or specialisation: the single-tile 64 × 64 backward (8 warps; up to 320 B of stack at
D >= 64), single 32 × 32 at D >= 80 (and at D = 64 on sm_90 once causal is a constant), the 32 × 32 dK/dV
kernel with 2 stages (D = 80, 96 on sm_90), the dQ kernel at 4 warps (D = 64), the 64 × 64 forward (D = 96).
The tightest rows run at 250-255 registers: the two-pass dK/dV kernel at D = 96 (64 + 32 split; both archs,
aligned or not), D = 80 on sm_80 and the odd (unaligned) D = 80, 96 variants.

Row tiles are loaded and stored with the row mask (the head dim is a full power-of-two block, or the
64 + 16/32 split of ``HEAD_DIMS``); P and dP tiles are recomputed from the saved base-2 LSE.
"""
import triton
import triton.language as tl

# Sequences up to this length (and D <= 64) run the single-tile backward.
SINGLE_MAX_L = 64

# ---------------------------------------------------------------------------------------------------------
# Tile table of kernels/attention.py (deterministic, no autotune), keyed by (L, D, causal, arch). Every row was
# chosen from AOT compiles for sm_80 and sm_90 (``attention.aot_launches`` reaches every row ``table_configs``
# lists; what was rejected: the docstring above). Rows are the same for both archs: these shapes are
# memory-bound and the 32/64-tiles fit both.

def fwd_config(seqlen, head_dim, causal, arch=90):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the forward."""
    if seqlen <= 32 or 64 < seqlen <= 256:
        return 32, 32, 4, 2
    return 64, 32, 4, 2


def bwd_config(seqlen, head_dim, causal, arch=90):
    """(SINGLE, BLOCK_M, BLOCK_N, num_warps, num_stages) of the dK/dV kernel; SINGLE: one program per (b, h)
    owns all keys (BLOCK_N >= L) and also computes dQ, looping over BLOCK_M query blocks."""
    if head_dim <= 64 and seqlen <= SINGLE_MAX_L:
        return (True, 16, 32, 2, 1) if seqlen <= 32 else (True, 32, 64, 8, 1)
    return False, 32, 32, 4, 1


def bwd_dq_config(seqlen, head_dim, causal, arch=90):
    """(num_warps, num_stages) of the two-pass backward's dQ kernel (same BLOCK_M x BLOCK_N as ``bwd_config``)."""
    return 2, 2


def table_configs(head_dim, max_seqlen, arch=90):
    """Every (fwd, bwd) launch config the table picks at this head dim and arch for 1 <= L <= ``max_seqlen``,
    causal or not: fwd ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``, bwd ``bwd_config`` + the dQ kernel's
    ``(num_warps, num_stages)`` (``(None, None)`` for the single-tile backward, which has no dQ launch)."""
    cases = [(n, c) for n in range(1, max_seqlen + 1) for c in (False, True)]
    fwd = {fwd_config(n, head_dim, c, arch) for n, c in cases}
    bwd = set()
    for n, c in cases:
        row = bwd_config(n, head_dim, c, arch)
        bwd.add(row + ((None, None) if row[0] else bwd_dq_config(n, head_dim, c, arch)))
    return sorted(fwd), sorted(bwd, key=repr)


def useful_share(seqlen, block_m, block_n, causal=False):
    """Real scores / computed scores of a (block_m, block_n) tiling of one (seqlen x seqlen) attention;
    causal: key blocks entirely above a query block's diagonal are skipped (as the kernels do)."""
    n_m, n_n = -(-seqlen // block_m), -(-seqlen // block_n)
    if not causal:
        return seqlen * seqlen / (n_m * block_m * n_n * block_n)
    computed = sum(min(n_n, -(-min(seqlen, (i + 1) * block_m) // block_n)) for i in range(n_m))
    return seqlen * (seqlen + 1) / 2 / (computed * block_m * block_n)



@triton.jit
def load_rows(base, rows, row_ok, stride_l, offs_d, UPCAST: tl.constexpr):
    """(len(rows), len(offs_d)) tile of rows ``rows`` (masked by ``row_ok``) starting at ``base``."""
    x = tl.load(base + rows[:, None] * stride_l + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def store_rows(base, rows, row_ok, stride_l, offs_d, x):
    tl.store(base + rows[:, None] * stride_l + offs_d[None, :], x.to(base.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def sequence_span(cu_ptr, pid_b, seqlen_arg, is_varlen):
    """(first token index in the (H, T) LSE layout, length, token offset for the strided tensors)."""
    tok0 = pid_b.to(tl.int64) * seqlen_arg
    seqlen = seqlen_arg
    start = tok0 * 0
    if is_varlen != 0:
        first = tl.load(cu_ptr + pid_b)
        seqlen = tl.load(cu_ptr + pid_b + 1) - first
        tok0 = first.to(tl.int64)
        start = first.to(tl.int64)
    return tok0, seqlen, start


@triton.jit
def head_offset(pid_b, pid_h, start, is_varlen, stride_b, stride_h, stride_l):
    """int64 element offset of head ``pid_h``'s first token of sequence ``pid_b`` in a (B, L, H, D)-strided tensor
    (varlen: one packed (T, H, D) batch, the sequence starting at token ``start``)."""
    return (pid_b.to(tl.int64) * (1 - is_varlen) * stride_b + start * stride_l
            + pid_h.to(tl.int64) * stride_h)


@triton.jit
def probs_tile(q0, q1, k0, k1, lse, rows, cols, row_ok, col_ok, qk_scale, causal,
           BLOCK_DT: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """P tile recomputed from the saved LSE₂; 0 outside the valid (and causal) region."""
    s = tl.dot(q0, tl.trans(k0), input_precision=INPUT_PRECISION)
    if BLOCK_DT > 0:
        s = tl.dot(q1, tl.trans(k1), s, input_precision=INPUT_PRECISION)
    valid = row_ok[:, None] & col_ok[None, :] & ((cols[None, :] <= rows[:, None]) | (causal == 0))
    return tl.where(valid, tl.exp2(s * qk_scale - lse[:, None]), 0.0)


@triton.jit
def dprobs_tile(do0, do1, v0, v1, BLOCK_DT: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """dP = dO Vᵀ."""
    dp = tl.dot(do0, tl.trans(v0), input_precision=INPUT_PRECISION)
    if BLOCK_DT > 0:
        dp = tl.dot(do1, tl.trans(v1), dp, input_precision=INPUT_PRECISION)
    return dp


@triton.jit
def load_key_heads(ptr, cols, col_ok, stride_l, hd, hd_ok):
    """(BLOCK_N, HEADS, BLOCK_D) fp32 tile of keys ``cols``: ``ptr`` is the batch row's base, ``hd`` the
    (HEADS, BLOCK_D) offsets of the heads' elements within one key."""
    offs = cols[:, None, None] * stride_l + hd[None, :, :]
    return tl.load(ptr + offs, mask=col_ok[:, None, None] & hd_ok[None, :, :], other=0.0).to(tl.float32)
