"""Tile building blocks of the attention kernels (``kernels/attention.py``, ``kernels/attention_pool.py``),
inlined into them.

Row tiles are loaded and stored with the row mask (the head dim is a full power-of-two block, or the
64 + 16/32 split of ``HEAD_DIMS``); P and dP tiles are recomputed from the saved base-2 LSE.
"""
import triton
import triton.language as tl


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
