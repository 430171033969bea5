"""Single-query attention pooling: one query per (batch row b, head h) over L keys. Triton kernels + launchers.

Math, per (b, h), over the keys ``j < n_b = min(kv_len[b], L)`` (all L without ``kv_len``):

    s_j = scale · <q, k_j>,  scale = D^-½,   p = softmax_j(s),   o = Σ_j p_j v_j
    backward:  δ = <dO, o>,  dp_j = <dO, v_j>,  ds_j = p_j (dp_j − δ),
               dv_j = p_j dO,  dk_j = scale · ds_j q,  dq = scale · Σ_j ds_j k_j   (0 for masked keys).

Layout. q is ``(B, H, D)`` (e.g. a view of a ``(B, H·D)`` projection), k and v are ``(B, L, H, D)`` views
read in place through strides: two slots of the packed kv projection ``(B, L, 2, H, D)`` (the ViT/text
last block), or two separate ``(B, L, H·D)`` projections (ResNet's AttentionPool2d). Only the unit stride
along D is required (the launchers copy otherwise). O is written ``(B, H, D)`` contiguous; the backward
writes dq ``(B, H, D)`` and dk/dv through their own strides (e.g. into one packed ``dkv``).

Algorithm. No matrix-multiply unit is involved (one query: ~4·L·H·D FLOPs over ~2·L·H·D elements of k and v,
memory-bound by far). A program owns HEADS heads of one batch row (grid ``(B, ⌈H/HEADS⌉)``, HEADS·BLOCK_D
= 128-256 lanes) and walks the keys in BLOCK_N chunks as ``(BLOCK_N, HEADS, BLOCK_D)`` tiles: per-head scores
by a reduction over D, an online softmax in base 2 (``qk_scale = D^-½·log2 e`` folded into q, ``exp2``),
and ``acc += Σ_j p_j v_j``. Saved for backward: O and the base-2 row log-sum-exp ``lse (B, H)`` fp32.
The backward is one program per (b, head group) too, one pass over the keys: P recomputed from the LSE,
δ fused, dk/dv stored chunk by chunk (zeros past ``kv_len``) and dq accumulated in registers: no atomics,
no preprocess launch, deterministic. Resources: every config compiles for sm_80 and sm_90 (with and without the
JIT's 16-divisibility specialisation) with 0 stack and 0 spills, at most 168 registers.

Head dims: any D <= 256; BLOCK_D = next power of two of D with the D tail masked (lanes, not bytes, are
wasted: D = 80 uses 80 of 128 lanes). All math in fp32; fp32, fp16 and bf16 inputs (operands upcast
right after their loads), results stored in the input dtype. Limits: L >= 1; ``kv_len[b] >= 1``
(``kv_len[b] = 0`` gives NaN, as the reference's softmax over no keys); ``kv_len[b] > L`` means L; every
access is masked.
"""
import torch
import triton
import triton.language as tl

from . import _aot
from ._attention_tiles import load_key_heads
from ._common import DTYPE_NAMES

MAX_HEAD_DIM = 256
# What the kernels serve (``python -m clipfast.info`` prints it; ``unsupported`` names the failing condition).
LIMITS = f"head dim <= {MAX_HEAD_DIM}, any L >= 1, float32/float16/bfloat16"
# BLOCK_D -> (HEADS, BLOCK_N, num_warps) of the forward and of the backward: HEADS·BLOCK_D = 256 lanes (the
# forward at BLOCK_D = 128: 1 head; with 2, ptxas keeps 8 B of stack in the specialised fp32 sm_80 build);
# the backward holds four (BLOCK_N, HEADS, BLOCK_D) tiles (k, v, dk, dv) at once, so it walks 8 keys.
_FWD_TILES = {16: (16, 16, 4), 32: (8, 16, 4), 64: (4, 16, 4), 128: (1, 16, 4), 256: (1, 16, 4)}
_BWD_TILES = {16: (16, 8, 4), 32: (8, 8, 4), 64: (4, 8, 4), 128: (2, 8, 4), 256: (1, 8, 4)}
_LOG2E = 1.4426950408889634


@triton.jit(do_not_specialize=["has_kv_len"])  # a runtime flag: one binary with and without kv_len
def _attention_pool_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, kv_len_ptr,
    qk_scale, n_keys, n_heads, head_dim, has_kv_len,
    stride_qb, stride_qh, stride_kb, stride_kl, stride_kh, stride_vb, stride_vl, stride_vh,
    HEADS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * HEADS + tl.arange(0, HEADS)
    offs_d = tl.arange(0, BLOCK_D)
    head_ok = heads < n_heads
    hd_ok = head_ok[:, None] & (offs_d < head_dim)[None, :]  # (HEADS, BLOCK_D)
    n_valid = n_keys
    if has_kv_len != 0:  # keys past kv_len[b] are masked
        n_valid = tl.minimum(tl.load(kv_len_ptr + pid_b), n_keys)
    q = tl.load(q_ptr + pid_b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=hd_ok, other=0.0)
    q = q.to(tl.float32) * qk_scale
    k_base = k_ptr + pid_b * stride_kb
    v_base = v_ptr + pid_b * stride_vb
    k_hd = heads[:, None] * stride_kh + offs_d[None, :]
    v_hd = heads[:, None] * stride_vh + offs_d[None, :]
    m_i = tl.full((HEADS,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((HEADS,), dtype=tl.float32)
    acc = tl.zeros((HEADS, BLOCK_D), dtype=tl.float32)
    for n_start in range(0, n_valid, BLOCK_N):
        cols = n_start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_valid
        k = load_key_heads(k_base, cols, col_ok, stride_kl, k_hd, hd_ok)
        s = tl.where(col_ok[:, None], tl.sum(k * q[None, :, :], 2), float("-inf"))  # (BLOCK_N, HEADS), base 2
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p, 0)
        v = load_key_heads(v_base, cols, col_ok, stride_vl, v_hd, hd_ok)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v, 0)
        m_i = m_new
    o = acc / l_i[:, None]
    o_offs = pid_b * n_heads * head_dim + heads[:, None] * head_dim + offs_d[None, :]  # o: (B, H, D) contiguous
    tl.store(o_ptr + o_offs, o.to(o_ptr.dtype.element_ty), mask=hd_ok)
    tl.store(lse_ptr + pid_b * n_heads + heads, m_i + tl.log2(l_i), mask=head_ok)


@triton.jit(do_not_specialize=["has_kv_len"])
def _attention_pool_bwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, lse_ptr, kv_len_ptr, dq_ptr, dk_ptr, dv_ptr,
    qk_scale, sm_scale, n_keys, n_heads, head_dim, has_kv_len,
    stride_qb, stride_qh, stride_kb, stride_kl, stride_kh, stride_vb, stride_vl, stride_vh,
    stride_dob, stride_doh, stride_gb, stride_gl, stride_gh,
    HEADS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dq (contiguous (B, H, D), like o) and dk, dv (sharing the strides ``stride_g*``) of one batch row's
    head group; every key 0..L-1 is written (zeros past kv_len)."""
    pid_b = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * HEADS + tl.arange(0, HEADS)
    offs_d = tl.arange(0, BLOCK_D)
    head_ok = heads < n_heads
    hd_ok = head_ok[:, None] & (offs_d < head_dim)[None, :]
    n_valid = n_keys
    if has_kv_len != 0:
        n_valid = tl.minimum(tl.load(kv_len_ptr + pid_b), n_keys)
    q = tl.load(q_ptr + pid_b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=hd_ok, other=0.0)
    q = q.to(tl.float32)
    do = tl.load(do_ptr + pid_b * stride_dob + heads[:, None] * stride_doh + offs_d[None, :], mask=hd_ok, other=0.0)
    do = do.to(tl.float32)
    o_offs = pid_b * n_heads * head_dim + heads[:, None] * head_dim + offs_d[None, :]
    o = tl.load(o_ptr + o_offs, mask=hd_ok, other=0.0).to(tl.float32)
    delta = tl.sum(do * o, 1)  # (HEADS,)
    lse = tl.load(lse_ptr + pid_b * n_heads + heads, mask=head_ok, other=0.0)
    qs = q * qk_scale
    k_base = k_ptr + pid_b * stride_kb
    v_base = v_ptr + pid_b * stride_vb
    k_hd = heads[:, None] * stride_kh + offs_d[None, :]
    v_hd = heads[:, None] * stride_vh + offs_d[None, :]
    g_hd = heads[:, None] * stride_gh + offs_d[None, :]
    dq = tl.zeros((HEADS, BLOCK_D), dtype=tl.float32)
    for n_start in range(0, n_keys, BLOCK_N):
        cols = n_start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_keys
        k = load_key_heads(k_base, cols, col_ok, stride_kl, k_hd, hd_ok)
        v = load_key_heads(v_base, cols, col_ok, stride_vl, v_hd, hd_ok)
        s = tl.sum(k * qs[None, :, :], 2)
        keep = (cols < n_valid)[:, None] & head_ok[None, :]
        p = tl.where(keep, tl.exp2(s - lse[None, :]), 0.0)  # (BLOCK_N, HEADS)
        ds = p * (tl.sum(v * do[None, :, :], 2) - delta[None, :])
        dq += tl.sum(ds[:, :, None] * k, 0)
        g_offs = pid_b * stride_gb + cols[:, None, None] * stride_gl + g_hd[None, :, :]
        g_mask = col_ok[:, None, None] & hd_ok[None, :, :]
        tl.store(dv_ptr + g_offs, (p[:, :, None] * do[None, :, :]).to(dv_ptr.dtype.element_ty), mask=g_mask)
        tl.store(dk_ptr + g_offs, (ds[:, :, None] * (q * sm_scale)[None, :, :]).to(dk_ptr.dtype.element_ty),
                 mask=g_mask)
    tl.store(dq_ptr + o_offs, (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=hd_ok)


def fwd_config(head_dim):
    """(HEADS, BLOCK_N, BLOCK_D, num_warps) of the forward for head dim ``head_dim``."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    heads, block_n, warps = _FWD_TILES[block_d]
    return heads, block_n, block_d, warps


def bwd_config(head_dim):
    """(HEADS, BLOCK_N, BLOCK_D, num_warps) of the backward."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    heads, block_n, warps = _BWD_TILES[block_d]
    return heads, block_n, block_d, warps


def unsupported(q):
    """Why the kernels can't run this problem (a string), or None. ``q``: the query, D last."""
    if q.dtype not in DTYPE_NAMES:
        return f"dtype {q.dtype} (kernels: float32, float16, bfloat16)"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    return None


def _check(q, k, v, kv_len):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}")
    if q.dim() != 3:
        raise ValueError(f"q: expected (B, H, D), got {tuple(q.shape)}")
    B, H, D = q.shape
    if k.dim() != 4 or k.shape[0] != B or k.shape[2:] != (H, D) or k.shape[1] < 1:
        raise ValueError(f"k: expected (B, L, H, D) = ({B}, L >= 1, {H}, {D}), got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise TypeError("k, v: expected the dtype and device of q")
    if D > MAX_HEAD_DIM:
        raise ValueError(f"q: head dim {D} not served by the kernels; expected <= {MAX_HEAD_DIM}")
    if kv_len is not None and (kv_len.dtype != torch.int32 or kv_len.shape != (B,) or kv_len.device != q.device):
        raise ValueError(f"kv_len: expected an int32 ({B},) tensor on {q.device}, got {kv_len.dtype} "
                         f"{tuple(kv_len.shape)} on {kv_len.device}")


def _unit_d(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _kv_len_arg(kv_len, q):
    """(pointer tensor, has_kv_len flag) for the kernels."""
    if kv_len is None:
        return torch.zeros(1, dtype=torch.int32, device=q.device), 0
    return kv_len, 1


def attention_pool_fwd(q, k, v, *, kv_len=None):
    """Attention pooling forward.

    Args:
        q: ``(B, H, D)``; k, v: ``(B, L, H, D)`` views (e.g. ``kv.unbind(2)`` of a packed ``(B, L, 2, H, D)``);
            fp32/fp16/bf16, unit stride along D (else copied), D <= 256.
        kv_len: int32 ``(B,)`` on q's device (row b sees keys ``0 .. kv_len[b] - 1``), or None (all L).

    Returns:
        (o ``(B, H, D)`` contiguous in q.dtype, lse ``(B, H)`` fp32 base-2 log-sum-exp of the scores).
    """
    _check(q, k, v, kv_len)
    q, k, v = _unit_d(q), _unit_d(k), _unit_d(v)
    B, L, H, D = k.shape
    o = torch.empty((B, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    heads, block_n, block_d, warps = fwd_config(D)
    lens, has_len = _kv_len_arg(kv_len, q)
    _attention_pool_fwd_kernel[(B, triton.cdiv(H, heads))](
        q, k, v, o, lse, lens, D ** -0.5 * _LOG2E, L, H, D, has_len,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        HEADS=heads, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps, num_stages=1)
    return o, lse


def attention_pool_bwd(do, q, k, v, o, lse, dq, dk, dv, *, kv_len=None):
    """Attention pooling backward: writes dq (``(B, H, D)`` contiguous) and dk, dv (k's shape, sharing
    strides with a unit stride along D, e.g. ``dkv.unbind(2)`` of one packed buffer). ``o``, ``lse``: the
    forward's outputs; ``do``: dL/do ``(B, H, D)``."""
    _check(q, k, v, kv_len)
    q, k, v, do = _unit_d(q), _unit_d(k), _unit_d(v), _unit_d(do)
    B, L, H, D = k.shape
    if dq.shape != q.shape or not dq.is_contiguous() or not o.is_contiguous():
        raise ValueError("dq, o: expected contiguous (B, H, D) tensors")
    if dk.shape != k.shape or dv.shape != k.shape or dk.stride() != dv.stride() or dk.stride(-1) != 1:
        raise ValueError("dk, dv: expected tensors of k's shape sharing strides, unit stride along D")
    if o.numel() == 0:
        return dq, dk, dv
    heads, block_n, block_d, warps = bwd_config(D)
    lens, has_len = _kv_len_arg(kv_len, q)
    _attention_pool_bwd_kernel[(B, triton.cdiv(H, heads))](
        q, k, v, o, do, lse, lens, dq, dk, dv, D ** -0.5 * _LOG2E, D ** -0.5, L, H, D, has_len,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), dk.stride(0), dk.stride(1), dk.stride(2),
        HEADS=heads, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps, num_stages=1)
    return dq, dk, dv


# Representative head dims of aot_launches per BLOCK_D row: (CLIP-like, divisible by 16: 64 is ResNet's
# AttentionPool2d and the attentional pooler, 80 a BLOCK_D = 128 head of ViT-H; odd, not divisible by 16).
_AOT_HEAD_DIMS = {16: (16, 12), 32: (32, 24), 64: (64, 40), 128: (80, 72), 256: (256, 200)}


def _meta_kv(B, L, H, D, dtype, offset=0):
    """k, v: the two slots of a packed ``(B, L, 2, H, D)`` meta buffer starting ``offset`` elements in."""
    buf = torch.empty(B * L * 2 * H * D + offset, dtype=dtype, device="meta")[offset:]
    return buf.view(B, L, 2, H, D).unbind(2)


def aot_launches():
    """Representative launcher calls (label, launcher, args, kwargs) for the AOT compile, on ``meta`` tensors
    (nothing is allocated or run): each dtype x each BLOCK_D row of the tables, with and without ``kv_len``,
    forward and backward (packed ``dkv``), twice: CLIP-like (ResNet's pool: B 128, L 50 keys, 32 heads; the
    row's head dim divisible by 16, so are the strides) and odd (B 3, L 13, 5 heads, the row's odd head dim,
    q and k/v misaligned by one element: nothing divisible by 16)."""
    meta = dict(device="meta")
    for dtype, ty in DTYPE_NAMES.items():
        for d_clip, d_odd in _AOT_HEAD_DIMS.values():
            for d, tag, (B, L, H), offset in ((d_clip, "", (128, 50, 32), 0), (d_odd, " odd", (3, 13, 5), 1)):
                q = torch.empty(B * H * d + offset, dtype=dtype, **meta)[offset:].view(B, H, d)
                k, v = _meta_kv(B, L, H, d, dtype, offset)
                dk, dv = _meta_kv(B, L, H, d, dtype)
                o = torch.empty(B, H, d, dtype=dtype, **meta)
                lse = torch.empty(B, H, **meta)
                for kv_len in (None, torch.empty(B, dtype=torch.int32, **meta)):
                    label = f"{ty} d{d}{tag} B{B} L{L} H{H}{' kv_len' if kv_len is not None else ''}"
                    yield f"{label} fwd", attention_pool_fwd, (q, k, v), dict(kv_len=kv_len)
                    yield (f"{label} bwd", attention_pool_bwd, (o, q, k, v, o, lse, torch.empty_like(o), dk, dv),
                           dict(kv_len=kv_len))


def aot_specs():
    """Every distinct binary the representative calls of ``aot_launches`` make the JIT build."""
    return _aot.specs_from_launches(aot_launches())
