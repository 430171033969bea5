"""Fused multi-head attention for CLIP's short sequences (FlashAttention-2 style): Triton kernels + launchers.

Math, per (sequence b, head h), over that sequence's ``n`` tokens (query i sees keys j < n, and j <= i
when causal):

    S = scale · Q Kᵀ,  scale = D^-½,   P = softmax_j(S),   O = P V
    backward:  dV = Pᵀ dO,  dP = dO Vᵀ,  δ_i = Σ_d dO_id O_id,  dS = P ∘ (dP − δ),  dQ = scale · dS K,
               dK = scale · dSᵀ Q.

Layout. Q, K and V are read in place through strides from CLIP's packed ``in_proj`` output
``(B, L, 3, H, D)`` (or any ``(B, L, H, D)`` views with a unit stride along D); O is written
``(B, L, H, D)`` — ``out_proj``'s input ``(B, L, H·D)`` — and the backward writes dQ/dK/dV through strides,
straight into a packed ``dqkv``. Varlen: tokens ``(T, H, D)`` (views of ``(T, 3, H, D)``) with
``cu_seqlens`` (int32, B + 1 offsets) — ``is_varlen`` is a runtime flag, so batched and varlen share
the compiled kernels. The row log-sum-exp (base 2) and δ live in fp32 ``(H, T)`` buffers, T = B·L or
the packed token count.

Forward (``_attn_fwd_kernel``): grid (query blocks, B·H); a program holds BLOCK_M queries and walks
BLOCK_N key blocks (causal: only up to its diagonal) with an online softmax in base 2
(``qk_scale = D^-½·log2 e`` folded into S, ``exp2``), and stores O and the row LSE₂ = m + log2 l.

Backward: for ``L <= 64`` and ``D <= 64`` (``SINGLE``) one program per (b, h) owns all the keys (BLOCK_N >= L)
and loops over BLOCK_M query blocks doing everything — δ from O and dO, P recomputed from LSE₂, dV, dP, dS,
dK and dQ — with no atomics and no preprocess launch (deterministic). Otherwise two launches, both
deterministic: ``_attn_bwd_dq_kernel`` (one program per query block: computes δ, stores it, and loops over
key blocks for dQ), then ``_attn_bwd_kernel`` (one program per key block: loops over query blocks
accumulating dK, dV in registers, reading δ). That pass recomputes S and dP once more instead of adding dQ
by atomics — more FLOPs, affordable since these shapes are memory-bound, and reproducible bit for bit.

Head dims. D = BLOCK_D + BLOCK_DT exactly, without padding: 32 = 32, 64 = 64, 80 = 64 + 16,
96 = 64 + 32, 128 = 128. A tail chunk (BLOCK_DT > 0) has its own partial dots and accumulators; other
head dims are not served here (``head_dim_split`` says so; the ops layer falls back to the reference).

Tiles (``fwd_config``/``bwd_config``/``bwd_dq_config``: a deterministic table keyed by (L, D, causal, arch);
no autotune). Powers of two only; the tail of the sequence is masked. Useful share = real scores / computed
scores (FA2 = the 128 × 128 tiles SDPA's flash backend uses at D = 64; D = 80 the same shares, padded to 96):

    L     fwd tiles   fwd share   bwd tiles (D <= 64 / D = 80)       bwd share   FA2 share
    <=32  32 × 32     -           single 16 × 32 / 2-pass 32 × 32    -           -
    50    64 × 32     61.0 %      single 32 × 64 / 2-pass 32 × 32    61.0 %      15.3 %
    77    32 × 32     64.3 %      2-pass 32 × 32                     64.3 %      36.2 %
    197   32 × 32     77.3 %      2-pass 32 × 32                     77.3 %      59.2 %
    257   64 × 32     71.7 %      2-pass 32 × 32                     79.6 %      44.8 %
    577   64 × 32     85.6 %      2-pass 32 × 32                     90.1 %      81.3 %

(share = L² / (⌈L/BM⌉·BM · ⌈L/BN⌉·BN); ``useful_share`` computes it, also for causal with the key blocks above
the diagonal skipped.) Causal L = 77 (text): 48.9 % forward and backward (6 of the 9 32-tiles computed) vs
FA2's 18.3 % (one 128-tile). The design note's 64 + 16 tails on both axes would push 197/257 to ~90 %; they
are not done (two launches per axis); the 32-tiles already beat FA2 at every CLIP length.

Resources: every config the table picks compiles for sm_80 and sm_90 with 0 stack and 0 spills (how the
table was chosen, and what was rejected: ``kernels/_attention_tiles.py``).

Precision: fp16/bf16 operands go to the tensor cores with fp32 accumulation, P and dS are cast to the
input dtype for their dots (as FA2 does); fp32 inputs use ``input_precision="ieee"``. Under the Triton
interpreter (CPU tensors) every operand is upcast to fp32 right after its load (``UPCAST``; bf16 is
broken there), so P and dS are not rounded.

Limits: D in {32, 64, 80, 96, 128}; 1 <= L <= 1024 (longer runs, but the tiles are not chosen for it);
q, k, v share strides (the launcher copies otherwise), unit stride along D; every access is masked.
"""
import torch
import triton
import triton.language as tl

from . import _aot
from ._common import DTYPE_NAMES, input_precision
from ._attention_tiles import bwd_config, bwd_dq_config, dprobs_tile, fwd_config, head_offset, load_rows
from ._attention_tiles import probs_tile, sequence_span, store_rows
from ._attention_tiles import SINGLE_MAX_L, useful_share  # noqa: F401 (part of this module's API: tests, bench)

# On CUDA the kernels serve fp16/bf16; fp32 "ieee" dots spill at every tile (AOT: 4-20 KB of stack), so
# fp32 CUDA tensors go to the reference (see ``unsupported``). fp32 runs the kernels under the interpreter.
GPU_DTYPES = ("fp16", "bf16")
HEAD_DIMS = {32: (32, 0), 64: (64, 0), 80: (64, 16), 96: (64, 32), 128: (128, 0)}
MAX_SEQLEN = 1024
# What the kernels serve (``python -m clipfast.info`` prints it; ``unsupported`` names the failing condition).
LIMITS = (f"head dim in {sorted(HEAD_DIMS)}, self-attention (L_q = L_k) with L <= {MAX_SEQLEN}, "
          "float16/bfloat16 on CUDA (float32 too under the interpreter)")
_LOG2E = 1.4426950408889634


@triton.jit(do_not_specialize=["is_varlen", "causal"])  # runtime flags: one binary for all four cases
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, cu_ptr,
    qk_scale, seqlen_arg, n_heads, is_varlen, causal,
    stride_b, stride_h, stride_l, stride_ob, stride_oh, stride_ol, stride_lse_h,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DT: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_b = pid_bh // n_heads
    pid_h = pid_bh % n_heads
    tok0, seqlen, start = sequence_span(cu_ptr, pid_b, seqlen_arg, is_varlen)
    m_start = pid_m * BLOCK_M
    if m_start < seqlen:
        off = head_offset(pid_b, pid_h, start, is_varlen, stride_b, stride_h, stride_l)
        off_o = head_offset(pid_b, pid_h, start, is_varlen, stride_ob, stride_oh, stride_ol)
        q_base, k_base, v_base, o_base = q_ptr + off, k_ptr + off, v_ptr + off, o_ptr + off_o
        rows = m_start + tl.arange(0, BLOCK_M)
        row_ok = rows < seqlen
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        q0 = load_rows(q_base, rows, row_ok, stride_l, offs_d, UPCAST)
        acc0 = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        if BLOCK_DT > 0:
            offs_t = BLOCK_D + tl.arange(0, BLOCK_DT)
            q1 = load_rows(q_base, rows, row_ok, stride_l, offs_t, UPCAST)
            acc1 = tl.zeros((BLOCK_M, BLOCK_DT), dtype=tl.float32)
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        hi = seqlen
        if causal != 0:
            hi = tl.minimum(seqlen, m_start + BLOCK_M)
        for n_start in range(0, hi, BLOCK_N):
            cols = n_start + offs_n
            col_ok = cols < seqlen
            k0 = load_rows(k_base, cols, col_ok, stride_l, offs_d, UPCAST)
            s = tl.dot(q0, tl.trans(k0), input_precision=INPUT_PRECISION)
            if BLOCK_DT > 0:
                k1 = load_rows(k_base, cols, col_ok, stride_l, offs_t, UPCAST)
                s = tl.dot(q1, tl.trans(k1), s, input_precision=INPUT_PRECISION)
            valid = col_ok[None, :] & ((cols[None, :] <= rows[:, None]) | (causal == 0))
            s = tl.where(valid, s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v0 = load_rows(v_base, cols, col_ok, stride_l, offs_d, UPCAST)
            acc0 = tl.dot(p.to(v0.dtype), v0, acc0 * alpha[:, None], input_precision=INPUT_PRECISION)
            if BLOCK_DT > 0:
                v1 = load_rows(v_base, cols, col_ok, stride_l, offs_t, UPCAST)
                acc1 = tl.dot(p.to(v1.dtype), v1, acc1 * alpha[:, None], input_precision=INPUT_PRECISION)
            m_i = m_new
        inv = 1.0 / l_i
        store_rows(o_base, rows, row_ok, stride_ol, offs_d, acc0 * inv[:, None])
        if BLOCK_DT > 0:
            store_rows(o_base, rows, row_ok, stride_ol, offs_t, acc1 * inv[:, None])
        lse_rows = lse_ptr + pid_h.to(tl.int64) * stride_lse_h + tok0 + rows
        tl.store(lse_rows, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit(do_not_specialize=["is_varlen", "causal"])
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, dq_ptr, lse_ptr, delta_ptr, cu_ptr,
    qk_scale, sm_scale, seqlen_arg, n_heads, is_varlen, causal,
    stride_b, stride_h, stride_l, stride_ob, stride_oh, stride_ol, stride_gb, stride_gh, stride_gl, stride_lse_h,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DT: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_b = pid_bh // n_heads
    pid_h = pid_bh % n_heads
    tok0, seqlen, start = sequence_span(cu_ptr, pid_b, seqlen_arg, is_varlen)
    m_start = pid_m * BLOCK_M
    if m_start < seqlen:
        off = head_offset(pid_b, pid_h, start, is_varlen, stride_b, stride_h, stride_l)
        off_o = head_offset(pid_b, pid_h, start, is_varlen, stride_ob, stride_oh, stride_ol)
        off_g = head_offset(pid_b, pid_h, start, is_varlen, stride_gb, stride_gh, stride_gl)
        rows = m_start + tl.arange(0, BLOCK_M)
        row_ok = rows < seqlen
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        q0 = load_rows(q_ptr + off, rows, row_ok, stride_l, offs_d, UPCAST)
        do0 = load_rows(do_ptr + off_o, rows, row_ok, stride_ol, offs_d, UPCAST)
        o0 = load_rows(o_ptr + off_o, rows, row_ok, stride_ol, offs_d, True)
        delta = tl.sum(do0.to(tl.float32) * o0, 1)
        dq0 = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        q1, do1 = q0, do0
        if BLOCK_DT > 0:
            offs_t = BLOCK_D + tl.arange(0, BLOCK_DT)
            q1 = load_rows(q_ptr + off, rows, row_ok, stride_l, offs_t, UPCAST)
            do1 = load_rows(do_ptr + off_o, rows, row_ok, stride_ol, offs_t, UPCAST)
            o1 = load_rows(o_ptr + off_o, rows, row_ok, stride_ol, offs_t, True)
            delta += tl.sum(do1.to(tl.float32) * o1, 1)
            dq1 = tl.zeros((BLOCK_M, BLOCK_DT), dtype=tl.float32)
        lse_rows = pid_h.to(tl.int64) * stride_lse_h + tok0 + rows
        tl.store(delta_ptr + lse_rows, delta, mask=row_ok)
        lse = tl.load(lse_ptr + lse_rows, mask=row_ok, other=0.0)
        hi = seqlen
        if causal != 0:
            hi = tl.minimum(seqlen, m_start + BLOCK_M)
        for n_start in range(0, hi, BLOCK_N):
            cols = n_start + offs_n
            col_ok = cols < seqlen
            k0 = load_rows(k_ptr + off, cols, col_ok, stride_l, offs_d, UPCAST)
            v0 = load_rows(v_ptr + off, cols, col_ok, stride_l, offs_d, UPCAST)
            k1, v1 = k0, v0
            if BLOCK_DT > 0:
                k1 = load_rows(k_ptr + off, cols, col_ok, stride_l, offs_t, UPCAST)
                v1 = load_rows(v_ptr + off, cols, col_ok, stride_l, offs_t, UPCAST)
            p = probs_tile(q0, q1, k0, k1, lse, rows, cols, row_ok, col_ok, qk_scale, causal, BLOCK_DT, INPUT_PRECISION)
            ds = p * (dprobs_tile(do0, do1, v0, v1, BLOCK_DT, INPUT_PRECISION) - delta[:, None])
            dq0 = tl.dot(ds.to(k0.dtype), k0, dq0, input_precision=INPUT_PRECISION)
            if BLOCK_DT > 0:
                dq1 = tl.dot(ds.to(k1.dtype), k1, dq1, input_precision=INPUT_PRECISION)
        store_rows(dq_ptr + off_g, rows, row_ok, stride_gl, offs_d, dq0 * sm_scale)
        if BLOCK_DT > 0:
            store_rows(dq_ptr + off_g, rows, row_ok, stride_gl, offs_t, dq1 * sm_scale)


@triton.jit(do_not_specialize=["is_varlen", "causal"])
def _attn_bwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, lse_ptr, delta_ptr, cu_ptr,
    qk_scale, sm_scale, seqlen_arg, n_heads, is_varlen, causal,
    stride_b, stride_h, stride_l, stride_ob, stride_oh, stride_ol, stride_gb, stride_gh, stride_gl, stride_lse_h,
    SINGLE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """dK, dV of one key block (loop over query blocks); SINGLE: the whole sequence is one tile and the
    program also computes δ (from O, dO) and dQ."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_b = pid_bh // n_heads
    pid_h = pid_bh % n_heads
    tok0, seqlen, start = sequence_span(cu_ptr, pid_b, seqlen_arg, is_varlen)
    n_start = pid_n * BLOCK_N
    if n_start < seqlen:
        off = head_offset(pid_b, pid_h, start, is_varlen, stride_b, stride_h, stride_l)
        off_o = head_offset(pid_b, pid_h, start, is_varlen, stride_ob, stride_oh, stride_ol)
        off_g = head_offset(pid_b, pid_h, start, is_varlen, stride_gb, stride_gh, stride_gl)
        cols = n_start + tl.arange(0, BLOCK_N)
        col_ok = cols < seqlen
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        k0 = load_rows(k_ptr + off, cols, col_ok, stride_l, offs_d, UPCAST)
        v0 = load_rows(v_ptr + off, cols, col_ok, stride_l, offs_d, UPCAST)
        dk0 = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dv0 = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        k1, v1 = k0, v0
        if BLOCK_DT > 0:
            offs_t = BLOCK_D + tl.arange(0, BLOCK_DT)
            k1 = load_rows(k_ptr + off, cols, col_ok, stride_l, offs_t, UPCAST)
            v1 = load_rows(v_ptr + off, cols, col_ok, stride_l, offs_t, UPCAST)
            dk1 = tl.zeros((BLOCK_N, BLOCK_DT), dtype=tl.float32)
            dv1 = tl.zeros((BLOCK_N, BLOCK_DT), dtype=tl.float32)
        lo = 0
        if causal != 0:
            lo = (n_start // BLOCK_M) * BLOCK_M
        lse_h = pid_h.to(tl.int64) * stride_lse_h + tok0
        for m_start in range(lo, seqlen, BLOCK_M):
            rows = m_start + offs_m
            row_ok = rows < seqlen
            q0 = load_rows(q_ptr + off, rows, row_ok, stride_l, offs_d, UPCAST)
            do0 = load_rows(do_ptr + off_o, rows, row_ok, stride_ol, offs_d, UPCAST)
            q1, do1 = q0, do0
            if BLOCK_DT > 0:
                q1 = load_rows(q_ptr + off, rows, row_ok, stride_l, offs_t, UPCAST)
                do1 = load_rows(do_ptr + off_o, rows, row_ok, stride_ol, offs_t, UPCAST)
            if SINGLE:
                o0 = load_rows(o_ptr + off_o, rows, row_ok, stride_ol, offs_d, True)
                delta = tl.sum(do0.to(tl.float32) * o0, 1)
                if BLOCK_DT > 0:
                    o1 = load_rows(o_ptr + off_o, rows, row_ok, stride_ol, offs_t, True)
                    delta += tl.sum(do1.to(tl.float32) * o1, 1)
            else:
                delta = tl.load(delta_ptr + lse_h + rows, mask=row_ok, other=0.0)
            lse = tl.load(lse_ptr + lse_h + rows, mask=row_ok, other=0.0)
            p = probs_tile(q0, q1, k0, k1, lse, rows, cols, row_ok, col_ok, qk_scale, causal, BLOCK_DT, INPUT_PRECISION)
            pt = tl.trans(p)
            dv0 = tl.dot(pt.to(do0.dtype), do0, dv0, input_precision=INPUT_PRECISION)
            if BLOCK_DT > 0:
                dv1 = tl.dot(pt.to(do1.dtype), do1, dv1, input_precision=INPUT_PRECISION)
            ds = p * (dprobs_tile(do0, do1, v0, v1, BLOCK_DT, INPUT_PRECISION) - delta[:, None])
            dst = tl.trans(ds)
            dk0 = tl.dot(dst.to(q0.dtype), q0, dk0, input_precision=INPUT_PRECISION)
            if BLOCK_DT > 0:
                dk1 = tl.dot(dst.to(q1.dtype), q1, dk1, input_precision=INPUT_PRECISION)
            if SINGLE:
                dq0 = tl.dot(ds.to(k0.dtype), k0, input_precision=INPUT_PRECISION)
                store_rows(dq_ptr + off_g, rows, row_ok, stride_gl, offs_d, dq0 * sm_scale)
                if BLOCK_DT > 0:
                    dq1 = tl.dot(ds.to(k1.dtype), k1, input_precision=INPUT_PRECISION)
                    store_rows(dq_ptr + off_g, rows, row_ok, stride_gl, offs_t, dq1 * sm_scale)
        store_rows(dk_ptr + off_g, cols, col_ok, stride_gl, offs_d, dk0 * sm_scale)
        store_rows(dv_ptr + off_g, cols, col_ok, stride_gl, offs_d, dv0)
        if BLOCK_DT > 0:
            store_rows(dk_ptr + off_g, cols, col_ok, stride_gl, offs_t, dk1 * sm_scale)
            store_rows(dv_ptr + off_g, cols, col_ok, stride_gl, offs_t, dv1)


def head_dim_split(head_dim):
    """(BLOCK_D, BLOCK_DT) with BLOCK_D + BLOCK_DT == head_dim, or None if the kernels don't serve it."""
    return HEAD_DIMS.get(head_dim)


def unsupported(q, seqlen):
    """Why the kernels can't run this problem (a string), or None. ``q``: any tensor with D last."""
    if q.dtype not in DTYPE_NAMES:
        return f"dtype {q.dtype} (kernels: float32, float16, bfloat16)"
    if q.device.type == "cuda" and DTYPE_NAMES[q.dtype] not in GPU_DTYPES:
        return f"dtype {q.dtype} on CUDA (kernels: float16, bfloat16; fp32 ieee dots spill)"
    if head_dim_split(q.shape[-1]) is None:
        return f"head dim {q.shape[-1]} (kernels: {sorted(HEAD_DIMS)})"
    if seqlen > MAX_SEQLEN:
        return f"sequence length {seqlen} > {MAX_SEQLEN}"
    return None


def _views(t, varlen):
    """(stride_b, stride_h, stride_l) of a (B, L, H, D) or varlen (T, H, D) tensor."""
    if varlen:
        return 0, t.stride(1), t.stride(0)
    return t.stride(0), t.stride(2), t.stride(1)


def _check(q, k, v, cu_seqlens, max_seqlen):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}")
    want = 3 if cu_seqlens is not None else 4
    if q.dim() != want:
        raise ValueError(f"q: expected {'(T, H, D)' if want == 3 else '(B, L, H, D)'}, got {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"k, v: expected shape {tuple(q.shape)} (same as q), got {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise TypeError("k, v: expected the dtype and device of q")
    if head_dim_split(q.shape[-1]) is None:
        raise ValueError(f"q: head dim {q.shape[-1]} not served by the kernels; expected one of {sorted(HEAD_DIMS)}")
    if cu_seqlens is not None:
        if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens: expected a 1-D int32 tensor of B + 1 offsets, got {cu_seqlens.dtype} "
                             f"{tuple(cu_seqlens.shape)}")
        if not isinstance(max_seqlen, int) or max_seqlen < 1:
            raise ValueError(f"max_seqlen: expected a positive int, got {max_seqlen!r}")


def _shared_strides(*ts):
    """The tensors, made contiguous when they don't share strides with a unit stride along D."""
    if all(t.stride() == ts[0].stride() for t in ts) and ts[0].stride(-1) == 1:
        return ts
    return tuple(t.contiguous() for t in ts)


def _problem(q, cu_seqlens, max_seqlen):
    """(n_seqs, seqlen (max), n_heads, n_tokens, cu tensor for the kernel, is_varlen)."""
    if cu_seqlens is not None:
        return cu_seqlens.numel() - 1, max_seqlen, q.shape[1], q.shape[0], cu_seqlens, 1
    B, L, H, _ = q.shape
    return B, L, H, B * L, torch.zeros(1, dtype=torch.int32, device=q.device), 0


def _arch(device):
    """The arch whose table rows a launch on ``device`` uses: the CUDA device's; for ``meta`` tensors (the AOT
    capture, ``_aot.capture(arch)``), the target of triton's active driver; 90 otherwise (the interpreter)."""
    if device.type == "meta":
        from triton.runtime import driver

        return driver.active.get_current_target().arch
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def attention_fwd(q, k, v, *, causal=False, cu_seqlens=None, max_seqlen=None):
    """Attention forward.

    Args:
        q, k, v: ``(B, L, H, D)`` views (e.g. of a packed ``(B, L, 3, H, D)`` in_proj output), or varlen
            ``(T, H, D)`` with ``cu_seqlens``; fp32/fp16/bf16; D in ``HEAD_DIMS``.
        causal: query i sees keys j <= i of its own sequence.
        cu_seqlens: int32 ``(B + 1,)`` token offsets of the sequences (varlen), or None.
        max_seqlen: the longest sequence (varlen; picks the tiles and the grid).

    Returns:
        (o ``(B, L, H, D)`` / ``(T, H, D)`` contiguous in q.dtype, lse ``(H, T)`` fp32 base-2 row LSE).
    """
    _check(q, k, v, cu_seqlens, max_seqlen)
    q, k, v = _shared_strides(q, k, v)
    n_seqs, seqlen, n_heads, n_tokens, cu, is_varlen = _problem(q, cu_seqlens, max_seqlen)
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((n_heads, n_tokens), dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return o, lse
    bd, bdt = head_dim_split(q.shape[-1])
    bm, bn, warps, stages = fwd_config(seqlen, q.shape[-1], causal, _arch(q.device))
    grid = (triton.cdiv(seqlen, bm), n_seqs * n_heads)
    _attn_fwd_kernel[grid](
        q, k, v, o, lse, cu, q.shape[-1] ** -0.5 * _LOG2E, seqlen, n_heads, is_varlen, int(causal),
        *_views(q, is_varlen), *_views(o, is_varlen), lse.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DT=bdt, UPCAST=q.device.type == "cpu",
        INPUT_PRECISION=input_precision(q.dtype), num_warps=warps, num_stages=stages)
    return o, lse


def attention_bwd(do, q, k, v, o, lse, dq, dk, dv, *, causal=False, cu_seqlens=None, max_seqlen=None):
    """Attention backward: writes dq, dk, dv (same shape as q; they share strides, e.g. views of one
    packed ``(B, L, 3, H, D)`` buffer). ``o``, ``lse``: the forward's outputs; ``do``: dL/do."""
    _check(q, k, v, cu_seqlens, max_seqlen)
    q, k, v = _shared_strides(q, k, v)
    o, do = _shared_strides(o, do)
    if not (dq.stride() == dk.stride() == dv.stride()) or dq.stride(-1) != 1 or dq.shape != q.shape:
        raise ValueError("dq, dk, dv: expected tensors of q's shape sharing strides, unit stride along D")
    n_seqs, seqlen, n_heads, _, cu, is_varlen = _problem(q, cu_seqlens, max_seqlen)
    if q.numel() == 0:
        return dq, dk, dv
    bd, bdt = head_dim_split(q.shape[-1])
    arch = _arch(q.device)
    single, bm, bn, warps, stages = bwd_config(seqlen, q.shape[-1], causal, arch)
    sm_scale = q.shape[-1] ** -0.5
    common = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DT=bdt, UPCAST=q.device.type == "cpu",
                  INPUT_PRECISION=input_precision(q.dtype))
    strides = (*_views(q, is_varlen), *_views(o, is_varlen), *_views(dq, is_varlen), lse.stride(0))
    scalars = (sm_scale * _LOG2E, sm_scale, seqlen, n_heads, is_varlen, int(causal))
    delta = lse if single else torch.empty_like(lse)  # SINGLE computes delta in registers
    if not single:
        dq_warps, dq_stages = bwd_dq_config(seqlen, q.shape[-1], causal, arch)
        _attn_bwd_dq_kernel[(triton.cdiv(seqlen, bm), n_seqs * n_heads)](
            q, k, v, o, do, dq, lse, delta, cu, *scalars, *strides, **common, num_warps=dq_warps,
            num_stages=dq_stages)
    _attn_bwd_kernel[(triton.cdiv(seqlen, bn), n_seqs * n_heads)](
        q, k, v, o, do, dq, dk, dv, lse, delta, cu, *scalars, *strides, SINGLE=single, **common,
        num_warps=warps, num_stages=stages)
    return dq, dk, dv


def _meta_qkv(shape, dtype, pad=0, offset=0):
    """q, k, v: the three slots of a packed ``(*shape[:-2], 3, H, D + pad)`` meta buffer (``shape`` = (B, L, H, D)
    or varlen (T, H, D)), cut to D and starting ``offset`` elements in (offset 1: misaligned pointers)."""
    *lead, H, D = shape
    n = 3 * H * (D + pad)
    for size in lead:
        n *= size
    buf = torch.empty(n + offset, dtype=dtype, device="meta")[offset:].view(*lead, 3, H, D + pad)
    return buf[..., :D].unbind(-3)


# Representative problems of aot_launches: (B, L, H) batched or (B sequences, T tokens, max_seqlen, H) varlen.
# CLIP: ViT-B/32 (50), text (77), ViT-B/16 (197), ViT-L/14 at 224 and 336 px (257, 577) and a short one (20),
# with packed qkv strides, n_heads and B·L (the LSE stride) divisible by 16 where CLIP's are; odd: sizes and
# strides not divisible by 16 (B·L, L, H, the padded head stride D + 8) and misaligned q/k/v, at lengths
# reaching every table row (13: short tiles / single 16 × 32; 40: single 32 × 64; 300: long tiles, two-pass;
# 1: the JIT makes seqlen_arg = 1 a constant); varlen: padding-free text (T tokens: any count, here odd) and
# the single-tile backward (max 50, T divisible by 16).
_AOT_BATCHED = ((128, 50, 12), (128, 77, 8), (64, 197, 12), (32, 257, 16), (16, 577, 16), (32, 20, 16))
_AOT_ODD = ((3, 13, 5), (3, 40, 5), (3, 300, 5), (3, 1, 5))
_AOT_VARLEN = ((128, 3001, 77, 8), (64, 2000, 50, 12))


def aot_launches():
    """Representative launcher calls (label, launcher, args, kwargs) for the AOT compile, on ``meta`` tensors
    (nothing is allocated or run): each dtype of ``GPU_DTYPES`` x head dim of ``HEAD_DIMS`` x the problems above,
    causal and not, forward and backward (packed ``dqkv``; the two-pass backward includes the dQ kernel)."""
    meta = dict(device="meta")
    for dtype in (d for d, ty in DTYPE_NAMES.items() if ty in GPU_DTYPES):
        ty = DTYPE_NAMES[dtype]
        for d in HEAD_DIMS:
            problems = [(f"B{b} L{n} H{h}", (b, n, h, d), {}, None) for b, n, h in _AOT_BATCHED]
            problems += [(f"odd B{b} L{n} H{h}", (b, n, h, d), dict(pad=8, offset=1), None) for b, n, h in _AOT_ODD]
            problems += [(f"varlen B{b} T{t} max{n} H{h}", (t, h, d), {}, (b, n)) for b, t, n, h in _AOT_VARLEN]
            for tag, shape, layout, varlen in problems:
                q, k, v = _meta_qkv(shape, dtype, **layout)
                do = torch.empty(shape, dtype=dtype, **meta)
                o, lse = do, torch.empty((shape[-2], shape[0] * (1 if varlen else shape[1])), **meta)
                dq, dk, dv = _meta_qkv(shape, dtype, **layout)
                kw = {}
                if varlen:
                    kw = dict(cu_seqlens=torch.empty(varlen[0] + 1, dtype=torch.int32, **meta), max_seqlen=varlen[1])
                for causal in (False, True):
                    label = f"{ty} d{d} {tag}{' causal' if causal else ''}"
                    yield f"{label} fwd", attention_fwd, (q, k, v), dict(causal=causal, **kw)
                    yield f"{label} bwd", attention_bwd, (do, q, k, v, o, lse, dq, dk, dv), dict(causal=causal, **kw)


def aot_specs():
    """Every distinct binary the representative calls of ``aot_launches`` make the JIT build on each arch of
    ``_aot.ARCHS`` (the launchers read the tile table of the target arch)."""
    return _aot.specs_from_launches(aot_launches(), arch=_aot.ARCHS)
