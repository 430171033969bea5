"""CLIP's symmetric contrastive (InfoNCE) loss in O(N) extra memory: the N×N logits are never stored.

Math. With image features I (N, d), text features T (N, d) and s = ``logit_scale`` (already
exponentiated, as OpenCLIP's models return it):

    S = s · I · Tᵀ                         (N, N), row i = image i, column j = text j
    lse_row_i = log Σ_j exp(S_ij)          lse_col_j = log Σ_i exp(S_ij)
    loss = ½ · (mean_i (lse_row_i − S_ii) + mean_j (lse_col_j − S_jj))

which is OpenCLIP's ``(CE(S, arange) + CE(Sᵀ, arange)) / 2``. Gradients (g = d loss):

    P_ij = g/(2N) · (exp(S_ij − lse_row_i) + exp(S_ij − lse_col_j))
    dI = s · (P · T − g/N · T)     dT = s · (Pᵀ · I − g/N · I)     ds = Σ_ij P_ij I_i·T_j − g/N · Σ_i I_i·T_i

Algorithm ("block" = rows a (M, d) against columns b (N, d); the whole loss is one block, the
distributed modes in ``clipfast.distributed`` use rectangular ones):

* Forward: the logits are produced tile by tile (``chunk_size`` rows × ``chunk_size`` columns on the
  chunked path); each tile is computed ONCE and gives both the row and the column log-sum-exp, each
  shifted by its own tile maximum (exp(S − max) ≤ 1, and S − max is exact near the maximum, so no
  underflow or cancellation at any scale); partial LSEs merge in float64. One N²d matmul.
* Backward: saved are only I, T, s and the two (float64) LSE vectors. Each tile is recomputed once and
  turned into G = P − g/N·[diagonal] in place: exp(S − hi − lo) with the LSE split into fp32 hi + lo
  (so S − lse is as exact as S itself, even at |S| ~ 100), coefficients equal to the common factor
  not folded (a saturated softmax gives exactly 1 − 1 = 0 on the diagonal, as PyTorch's softmax −
  one-hot), others folded into the exponent; then dI += G·T and dT += Gᵀ·I. Three N²d matmuls: four
  in total, against six for OpenCLIP; d s = Σ_i I_i·(G·T)_i needs no extra matmul.
* Extra memory: two tile buffers (2 · chunk² · 4 bytes) plus O(N) vectors; the gradients themselves
  are accumulated in place. The full-matrix oracle ``contrastive_loss_ref`` is for small N only.

Backends (``clipfast.backend.select("contrastive_loss", device)``): ``triton`` runs the block math in
``clipfast.kernels.contrastive_loss`` (CUDA, or CPU under ``TRITON_INTERPRET=1``); ``reference`` is the
chunked PyTorch path above (fp32 math on any device). Both compute in fp32 whatever the input dtype,
so fp16/bf16 features at s = 100 give finite, accurate losses; gradients come back in the input dtype.
"""
import math

import torch
import torch.nn.functional as F

from clipfast import backend as _backend

__all__ = ["contrastive_loss", "contrastive_loss_ref", "lse_block", "lse_block_fwd", "lse_block_bwd",
           "row_cross_entropy", "local_contrastive_loss"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64: chunked path only
# Default tile of the chunked path: rows × columns of S per step (2 buffers of 16 MiB each). On 2 CPU
# cores 1024…2048 tiles run the matmuls at the same speed; the larger one issues 4× fewer ops.
_TILE_M = 2048
_TILE_N = 2048


def contrastive_loss_ref(image_features, text_features, logit_scale):
    """Full N×N CLIP loss in plain differentiable PyTorch (the oracle; small N only).

    Args:
        image_features: (N, d). text_features: (N, d). logit_scale: scalar tensor or float, s (already
            exponentiated).
    Returns:
        0-d loss ``(CE(S, arange(N)) + CE(Sᵀ, arange(N))) / 2`` with S = s·I·Tᵀ, computed in the
        features' dtype (promoted with the scale's).
    """
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


# ---------------------------------------------------------------------------------------------------
# Input checks.

def _check_features(image_features, text_features, *, square=True, names=("image_features", "text_features")):
    for name, t in zip(names, (image_features, text_features)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D tensor (N, d), got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: expected float32, float16, bfloat16 (or float64), got {t.dtype}")
    a, b = image_features, text_features
    if a.dtype != b.dtype:
        raise TypeError(f"{names[1]}: expected dtype {a.dtype} (same as {names[0]}), got {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{names[1]}: expected device {a.device} (same as {names[0]}), got {b.device}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[1]}: expected feature size d = {a.shape[1]} (same as {names[0]}), "
                         f"got {b.shape[1]}")
    if square and a.shape[0] != b.shape[0]:
        raise ValueError(f"{names[1]}: expected N = {a.shape[0]} rows (one text per image in {names[0]}), "
                         f"got {b.shape[0]}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError(f"{names[0]}: expected at least one pair, got N = 0")


def check_scale(logit_scale, device, name="logit_scale"):
    """Validate ``logit_scale`` (a finite 1-element tensor or number) and return it as a 0-d fp32 tensor.

    No host synchronisation: a CPU value is checked on the host (a ValueError); on a GPU the check is
    an asynchronous device-side assert (``torch._assert_async``: a non-finite scale fails the next
    synchronising call with "expected a finite value"); under ``torch.compile`` it is skipped.
    """
    if isinstance(logit_scale, (int, float)) and not isinstance(logit_scale, bool):
        logit_scale = torch.tensor(float(logit_scale), device=device)
    if not isinstance(logit_scale, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor or a number, got {type(logit_scale).__name__}")
    if logit_scale.numel() != 1:
        raise ValueError(f"{name}: expected a single value (0-d or 1-element tensor), got shape "
                         f"{tuple(logit_scale.shape)}")
    if not logit_scale.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {logit_scale.dtype}")
    if logit_scale.device != device:
        raise ValueError(f"{name}: expected device {device} (same as the features), got {logit_scale.device}")
    value = logit_scale.detach()
    if torch.compiler.is_compiling() or value.device.type == "meta":
        pass
    elif value.device.type == "cpu":
        if not math.isfinite(float(value)):
            raise ValueError(f"{name}: expected a finite value, got {float(value)}")
    else:
        torch._assert_async(torch.isfinite(value).all(), f"{name}: expected a finite value")
    return logit_scale.reshape(())


def _check_chunk(chunk_size):
    if chunk_size is None:
        return _TILE_M, _TILE_N
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
    return chunk_size, chunk_size


# ---------------------------------------------------------------------------------------------------
# Chunked PyTorch block math (the CPU path; same contract as the Triton launchers).

def _acc_dtype(t):
    """fp32 math for fp32/fp16/bf16 inputs, fp64 for fp64 (used by gradcheck)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _lse_fwd_chunked(a, b, s, want_row, want_col, tiles, positive_offset=None):
    """Row/column LSEs of S = s·a·bᵀ, tile by tile, each tile computed once; float64 out (an O(N) cost
    that keeps lse − S exact to the rounding of S itself at |S| ~ 100), None where unwanted. With
    ``positive_offset`` k, also the (M,) dots a_i·b_{i+k} (0 outside the block) in the compute dtype."""
    (m, _), n = a.shape, b.shape[0]
    if positive_offset is not None:
        pos = _positive_dots(a, b, positive_offset, tiles[0])
        return (*_lse_fwd_chunked(a, b, s, want_row, want_col, tiles), pos)
    tm, tn = min(tiles[0], m), min(tiles[1], n)
    acc, dev, f64 = _acc_dtype(a), a.device, torch.float64
    lse_row = torch.full((m,), -math.inf, dtype=f64, device=dev) if want_row else None
    lse_col = torch.full((n,), -math.inf, dtype=f64, device=dev) if want_col else None
    buf = torch.empty(tm * tn, dtype=acc, device=dev)
    buf2 = torch.empty(tm * tn, dtype=acc, device=dev) if want_row and want_col else None
    for r0 in range(0, m, tm):
        ar = a[r0:r0 + tm].to(acc) * s  # (rows, d), s folded into the rows
        for c0 in range(0, n, tn):
            bc = b[c0:c0 + tn].to(acc)  # (cols, d)
            shape = (ar.shape[0], bc.shape[0])
            t = buf[: shape[0] * shape[1]].view(shape)
            torch.mm(ar, bc.T, out=t)  # S tile
            if want_col:  # exp(S − colmax) ≤ 1, and S − colmax is exact near the maximum
                col_max = t.amax(0)
                e = buf2[: shape[0] * shape[1]].view(shape) if want_row else t
                part = torch.sub(t, col_max[None, :], out=e).exp_().sum(0).to(f64).log_().add_(col_max.to(f64))
                torch.logaddexp(lse_col[c0:c0 + tn], part, out=lse_col[c0:c0 + tn])
            if want_row:
                row_max = t.amax(1)
                part = t.sub_(row_max[:, None]).exp_().sum(1).to(f64).log_().add_(row_max.to(f64))
                torch.logaddexp(lse_row[r0:r0 + tm], part, out=lse_row[r0:r0 + tm])
    return lse_row, lse_col


def _positive_dots(a, b, k, chunk):
    """(M,) a_i·b_{i+k} in the compute dtype, 0 where i + k is outside [0, N); row chunks of ``chunk``."""
    (m, _), n = a.shape, b.shape[0]
    acc = _acc_dtype(a)
    pos = torch.zeros(m, dtype=acc, device=a.device)
    i0, i1 = max(0, -k), min(m, n - k)
    for r0 in range(i0, i1, chunk):
        r1 = min(i1, r0 + chunk)
        pos[r0:r1] = torch.einsum("md,md->m", a[r0:r1].to(acc), b[r0 + k:r1 + k].to(acc))
    return pos


def _coef_factor(*coefs):
    """A common factor f of the coefficients (max |coef|, 1 if all are 0): P = f·(E_row + E_col)."""
    f = max(float(c.abs().max()) for c in coefs if c is not None and c.numel())
    return f if f > 0 else 1.0


def _shift(lse, coef, f, acc):
    """Shift σ with (coef/f)·exp(S − lse) = exp(S − σ), split as σ = hi + lo in the compute dtype so
    that S − hi is exact near the maximum (lo None when exact). Coefficients equal to f are not folded
    (so a saturated softmax gives exactly f·1); negative ones are multiplied in: returns (hi, lo, mul)."""
    lse = lse.to(torch.float64)
    ratio = coef.to(torch.float64) / f
    mul = None
    if bool((ratio == 1).all()):
        shift = lse
    elif bool((ratio >= 0).all()):
        shift = lse - ratio.log()  # ratio = 0 → σ = +inf → 0
    else:
        mul, shift = ratio.to(acc), lse
    if acc == torch.float64:
        return shift, None, mul
    hi = shift.to(acc)
    lo = torch.where(torch.isfinite(hi), shift - hi.to(torch.float64), 0.0).to(acc)
    return hi, (lo if bool(lo.any()) else None), mul


def _exp_term(t, out, shift, idx, dim):
    """out = coef·exp(t − lse) along ``dim`` (1: per row, 0: per column), from ``_shift``'s (hi, lo, mul)
    restricted to ``idx``; ``out`` may alias ``t``."""
    hi, lo, mul = (None if v is None else (v[idx][:, None] if dim == 1 else v[idx][None, :]) for v in shift)
    torch.sub(t, hi, out=out)
    if lo is not None:
        out.sub_(lo)
    out.exp_()
    if mul is not None:
        out.mul_(mul)


def _sub_diag(t, k, r0, c, f):
    """t[ii, ii + k] −= c/f (tile diagonal k = global positives); c a float or a per-row (M,) tensor."""
    dg = t.diagonal(k)
    if not dg.numel():
        return
    if isinstance(c, torch.Tensor):
        i0 = r0 + max(0, -k)
        dg.sub_(c[i0:i0 + dg.numel()].to(t.dtype) / f)
    else:
        dg.sub_(c / f)


def _lse_bwd_chunked(a, b, s, lse_row, lse_col, coef_row, coef_col, diag, tiles):
    """(da, db, dscale) of Σ coef_row·lse_row + Σ coef_col·lse_col − c·Σ_i S_{i,i+k} (LSEs held fixed).

    da = s·G·b, db = s·Gᵀ·a, dscale = Σ_ij G_ij a_i·b_j with G = P − c·[j = i + k] (``diag`` = (k, c) or
    None) and P as in the module docstring; either direction may be None (absent). The diagonal is
    subtracted inside the tiles, so dscale's cancellation happens per element, as in PyTorch's
    softmax − one-hot. Each tile of S is recomputed once.
    """
    (m, d), n = a.shape, b.shape[0]
    tm, tn = min(tiles[0], m), min(tiles[1], n)
    acc, dev = _acc_dtype(a), a.device
    use_row, use_col = lse_row is not None, lse_col is not None
    f = _coef_factor(coef_row if use_row else None, coef_col if use_col else None)
    sh_row = _shift(lse_row, coef_row, f, acc) if use_row else None
    sh_col = _shift(lse_col, coef_col, f, acc) if use_col else None
    pb = torch.zeros(m, d, dtype=acc, device=dev)  # (G/f)·b, scaled by f·s at the end
    db = torch.zeros(n, d, dtype=acc, device=dev)
    buf = torch.empty(tm * tn, dtype=acc, device=dev)
    buf2 = torch.empty(tm * tn, dtype=acc, device=dev) if use_row and use_col else None
    dscale = torch.zeros((), dtype=torch.float64, device=dev)
    for r0 in range(0, m, tm):
        a_r = a[r0:r0 + tm].to(acc)
        ar = a_r * s
        rows = slice(r0, r0 + ar.shape[0])
        for c0 in range(0, n, tn):
            bc = b[c0:c0 + tn].to(acc)
            cols = slice(c0, c0 + bc.shape[0])
            shape = (ar.shape[0], bc.shape[0])
            t = buf[: shape[0] * shape[1]].view(shape)
            torch.mm(ar, bc.T, out=t)  # S tile
            if use_row and use_col:
                e = buf2[: shape[0] * shape[1]].view(shape)
                _exp_term(t, e, sh_row, rows, 1)
                _exp_term(t, t, sh_col, cols, 0)
                t.add_(e)  # P tile
            elif use_col:
                _exp_term(t, t, sh_col, cols, 0)
            else:
                _exp_term(t, t, sh_row, rows, 1)
            if diag is not None:
                _sub_diag(t, r0 + diag[0] - c0, r0, diag[1], f)
            pb[rows].addmm_(t, bc)
            db[cols].addmm_(t.T, ar, alpha=f)  # s·Gᵀ·a (ar carries s)
        dscale += rowdot_sum(pb[rows], a_r, dtype=torch.float64)  # fp64: blocks of a ring cancel
    return pb.mul_(s * f), db, dscale * f


# ---------------------------------------------------------------------------------------------------
# Backend dispatch for one block.

def lse_block_fwd(a, b, scale, *, want_row=True, want_col=True, chunk_size=None, backend=None,
                  positive_offset=None):
    """Row and column log-sum-exp of S = scale·a·bᵀ over one block, each S tile computed once.

    Args:
        a: (M, d), b: (N, d) features, float32/float16/bfloat16, same dtype and device.
        scale: 0-d tensor s (not differentiated here).
        want_row / want_col: skip a direction (returned as None) on the chunked path.
        chunk_size: tile edge of the chunked path (default 2048); ignored by Triton.
        backend: "triton" or "reference"; None → ``clipfast.backend.select``.
        positive_offset: None, or k: also return the positives' dots a_i·b_{i+k} (M,), unscaled, 0 where
            i + k is outside the block (on Triton from the forward's own tiles).
    Returns:
        (lse_row (M,), lse_col (N,)) float32, each or None; and the (M,) dots with ``positive_offset``.
    """
    backend = backend or _backend.select("contrastive_loss", a.device)
    if backend == "triton" and a.dtype != torch.float64:
        from clipfast.kernels.contrastive_loss import contrastive_loss_fwd

        lse_row, lse_col, *pos = contrastive_loss_fwd(a, b, scale.detach().float().reshape(1), positive_offset)
        return (lse_row if want_row else None), (lse_col if want_col else None), *pos
    return _lse_fwd_chunked(a, b, float(scale), want_row, want_col, _check_chunk(chunk_size), positive_offset)


def lse_block_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col, *, diag=None, chunk_size=None,
                  backend=None):
    """Gradients of Σ_i coef_row_i·lse_row_i + Σ_j coef_col_j·lse_col_j − c·Σ_i S_{i,i+k} for one block.

    Args:
        a: (M, d), b: (N, d); scale: 0-d tensor s.
        lse_row (M,), lse_col (N,): the GLOBAL LSEs of these rows / columns; either may be None together
            with its coefficient (that direction contributes nothing).
        coef_row (M,), coef_col (N,): weights, e.g. grad·0.5/N.
        diag: None, or (k, c): the positives (i, i + k) of this block enter with weight −c (a float, a
            0-d tensor or a per-row (M,) tensor), e.g. (0, grad/N) for the CLIP loss.
    Returns:
        (da (M, d), db (N, d), dscale 0-d), fp32 (fp64 for fp64 inputs): with G = P − c·[j = i + k],
        da = s·G·b, db = s·Gᵀ·a, dscale = Σ_ij G_ij a_i·b_j.
    """
    backend = backend or _backend.select("contrastive_loss", a.device)
    if backend == "triton" and a.dtype != torch.float64:
        from clipfast.kernels.contrastive_loss import contrastive_loss_bwd

        (m, _), n = a.shape, b.shape[0]
        f32 = dict(dtype=torch.float32, device=a.device)
        if lse_row is None:
            lse_row, coef_row = torch.full((m,), math.inf, **f32), torch.zeros(m, **f32)
        if lse_col is None:
            lse_col, coef_col = torch.full((n,), math.inf, **f32), torch.zeros(n, **f32)
        # The positives and d(scale) are folded into the kernel (no division by s: finite at s = 0).
        return contrastive_loss_bwd(a, b, scale.detach().float().reshape(1), lse_row.float(), lse_col.float(),
                                    coef_row.float(), coef_col.float(), positive=diag)
    if diag is not None and not (isinstance(diag[1], torch.Tensor) and diag[1].dim()):
        diag = (diag[0], float(diag[1]))
    return _lse_bwd_chunked(a, b, float(scale), lse_row, lse_col, coef_row, coef_col, diag, _check_chunk(chunk_size))


class _LseBlock(torch.autograd.Function):
    """(lse_row, lse_col) of S = scale·a·bᵀ with gradients to a, b and scale (for the gather modes)."""

    @staticmethod
    def forward(ctx, a, b, scale, want_row, want_col, chunk_size, backend):
        lse_row, lse_col = lse_block_fwd(a, b, scale, want_row=want_row, want_col=want_col,
                                         chunk_size=chunk_size, backend=backend)
        ctx.save_for_backward(a, b, scale, *(t for t in (lse_row, lse_col) if t is not None))
        ctx.flags = (want_row, want_col, chunk_size, backend)
        outs = tuple(t for t in (lse_row, lse_col) if t is not None)
        return outs if len(outs) > 1 else outs[0]

    @staticmethod
    def backward(ctx, *grads):
        want_row, want_col, chunk_size, backend = ctx.flags
        a, b, scale, *lses = ctx.saved_tensors
        lses, grads = list(lses), list(grads)
        lse_row = lses.pop(0) if want_row else None
        g_row = grads.pop(0) if want_row else None
        lse_col = lses.pop(0) if want_col else None
        g_col = grads.pop(0) if want_col else None
        if g_row is None and want_row:
            g_row = torch.zeros_like(lse_row)
        if g_col is None and want_col:
            g_col = torch.zeros_like(lse_col)
        da, db, dscale = lse_block_bwd(a, b, scale, lse_row, lse_col,
                                       None if g_row is None else g_row.to(torch.float64).contiguous(),
                                       None if g_col is None else g_col.to(torch.float64).contiguous(),
                                       chunk_size=chunk_size, backend=backend)
        return da.to(a.dtype), db.to(b.dtype), dscale.to(scale.dtype).reshape(scale.shape), None, None, None, None


def lse_block(a, b, scale, *, want_row=True, want_col=True, chunk_size=None):
    """Differentiable row/column LSEs of S = scale·a·bᵀ (a (M, d), b (N, d), scale 0-d tensor s).

    Returns lse_row (M,) and/or lse_col (N,) in fp32 (a tuple when both are wanted). Gradients flow to
    a, b and scale; memory O(M + N) plus tiles. Used by the distributed gather modes.
    """
    if not (want_row or want_col):
        raise ValueError("want_row / want_col: at least one direction must be wanted")
    _check_features(a, b, square=False, names=("a", "b"))
    scale = check_scale(scale, a.device, "scale")
    _check_chunk(chunk_size)
    backend = _backend.select("contrastive_loss", a.device)
    return _LseBlock.apply(a, b, scale, want_row, want_col, chunk_size, backend)


def rowdot_sum(a, b, chunk=256, dtype=None):
    """Σ_i a_i·b_i in ``dtype`` (default fp32, fp64 for fp64 inputs), in row chunks (no (N, d) temporary)."""
    acc = dtype or _acc_dtype(a)
    total = torch.zeros((), dtype=acc, device=a.device)
    for r0 in range(0, a.shape[0], chunk):
        total += (a[r0:r0 + chunk].to(acc) * b[r0:r0 + chunk].to(acc)).sum()
    return total


class _RowCrossEntropy(torch.autograd.Function):
    """ce_i = lse_row_i − S_{i,i+k}: cross-entropy of row i of S = scale·a·bᵀ with target column i + k."""

    @staticmethod
    def forward(ctx, a, b, scale, offset, chunk_size, backend):
        lse_row, _, s_ii = lse_block_fwd(a, b, scale, want_col=False, chunk_size=chunk_size, backend=backend,
                                         positive_offset=offset)
        acc = _acc_dtype(a)
        ctx.save_for_backward(a, b, scale, lse_row)
        ctx.args = (offset, chunk_size, backend)
        return (lse_row - scale.double() * s_ii.double()).to(acc)

    @staticmethod
    def backward(ctx, grad):
        a, b, scale, lse_row = ctx.saved_tensors
        offset, chunk_size, backend = ctx.args
        g = grad.to(torch.float64).contiguous()
        da, db, dscale = lse_block_bwd(a, b, scale, lse_row, None, g, None, diag=(offset, g),
                                       chunk_size=chunk_size, backend=backend)
        return da.to(a.dtype), db.to(b.dtype), dscale.to(scale.dtype).reshape(scale.shape), None, None, None


def row_cross_entropy(a, b, scale, offset=0, *, chunk_size=None):
    """Per-row cross-entropy of S = scale·a·bᵀ with row i's target column i + ``offset``, chunked.

    Args:
        a: (M, d) rows (e.g. this rank's images); b: (N, d) columns (e.g. all texts), N ≥ offset + M.
        scale: 0-d tensor s; offset: column of row 0's positive (rank·B in the gather mode).
    Returns:
        (M,) fp32 ``lse_row_i − S_{i,i+offset}`` (= ``F.cross_entropy(S, targets, reduction="none")``);
        gradients to a, b and scale, O(M + N) memory plus tiles.
    """
    _check_features(a, b, square=False, names=("a", "b"))
    if not 0 <= offset <= b.shape[0] - a.shape[0]:
        raise ValueError(f"offset: expected 0 <= offset <= {b.shape[0] - a.shape[0]} (N - M), got {offset}")
    scale = check_scale(scale, a.device, "scale")
    _check_chunk(chunk_size)
    return _RowCrossEntropy.apply(a, b, scale, offset, chunk_size, _backend.select("contrastive_loss", a.device))


# ---------------------------------------------------------------------------------------------------
# The symmetric loss with positives on the diagonal, for any "engine" that supplies the global LSEs.

class LocalEngine:
    """Single-process engine: the block is the whole batch."""

    def __init__(self, chunk_size=None, backend=None):
        self.chunk_size, self.backend = chunk_size, backend

    def forward(self, a, b, scale):
        """Global (lse_row, lse_col) of this rank's rows a and columns b."""
        return lse_block_fwd(a, b, scale, chunk_size=self.chunk_size, backend=self.backend)

    def forward_with_positives(self, a, b, scale):
        """(lse_row, lse_col, a_i·b_i (N,)): the diagonal from the same tiles (one pass, no extra launches)."""
        return lse_block_fwd(a, b, scale, chunk_size=self.chunk_size, backend=self.backend, positive_offset=0)

    def backward(self, a, b, scale, lse_row, lse_col, coef_row, coef_col, diag_coef):
        """(da, db, dscale) summed over every block these rows and columns meet, with the positives
        (i, i) of the local pairs entering with weight −diag_coef."""
        return lse_block_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col, diag=(0, diag_coef),
                             chunk_size=self.chunk_size, backend=self.backend)


class _ContrastiveLoss(torch.autograd.Function):
    """½·(mean_i(lse_row_i − S_ii) + mean_j(lse_col_j − S_jj)) over the local pairs, grads in place."""

    @staticmethod
    def forward(ctx, a, b, scale, engine):
        if hasattr(engine, "forward_with_positives"):
            lse_row, lse_col, pos = engine.forward_with_positives(a, b, scale)
            diag = pos.double().sum()  # Σ_i a_i·b_i
        else:  # engines that only give the LSEs (the distributed ones)
            lse_row, lse_col = engine.forward(a, b, scale)
            diag = rowdot_sum(a, b, dtype=torch.float64)
        n = a.shape[0]
        ctx.save_for_backward(a, b, scale, lse_row, lse_col)
        ctx.engine = engine
        loss = (lse_row.double().sum() + lse_col.double().sum()) / (2 * n) - scale.double() * diag / n
        return loss.to(_acc_dtype(a))

    @staticmethod
    def backward(ctx, grad):
        a, b, scale, lse_row, lse_col = ctx.saved_tensors
        n = a.shape[0]
        acc = _acc_dtype(a)
        g = grad.to(acc)
        coef = (g * 0.5 / n).expand(n).contiguous()
        da, db, dscale = ctx.engine.backward(a, b, scale, lse_row, lse_col, coef, coef, g / n)
        return da.to(a.dtype), db.to(b.dtype), dscale.to(scale.dtype).reshape(scale.shape), None


def local_contrastive_loss(image_features, text_features, logit_scale, engine):
    """The loss over this process's pairs with global LSEs from ``engine`` (see ``clipfast.distributed``)."""
    return _ContrastiveLoss.apply(image_features, text_features, logit_scale, engine)


def contrastive_loss(image_features, text_features, logit_scale, *, chunk_size=None):
    """CLIP's symmetric contrastive loss without materialising the N×N logits.

    loss = ½·(CE(S, arange(N)) + CE(Sᵀ, arange(N))), S = logit_scale · I · Tᵀ — OpenCLIP's ``ClipLoss``
    on one device — in O(N) extra memory (plus tiles) and four N²d matmuls for forward + backward.

    Args:
        image_features: (N, d) float32/float16/bfloat16 (normalised or not; any strides).
        text_features: (N, d), same dtype and device; row i is image i's positive.
        logit_scale: 0-d (or 1-element) tensor s, ALREADY exponentiated (``model.logit_scale.exp()``),
            or a number; must be finite.
        chunk_size: tile edge of the chunked path (rows and columns of S per step; default 2048).
            Smaller uses less memory; results agree to rounding. Ignored by the Triton backend.
    Returns:
        0-d fp32 loss; gradients flow to both feature tensors (in their dtype) and to logit_scale.
    Raises:
        TypeError / ValueError naming the argument for wrong types, dtypes, shapes, devices, N = 0 or a
        non-finite scale.
    """
    _check_features(image_features, text_features)
    scale = check_scale(logit_scale, image_features.device)
    _check_chunk(chunk_size)
    engine = LocalEngine(chunk_size, _backend.select("contrastive_loss", image_features.device))
    return _ContrastiveLoss.apply(image_features, text_features, scale, engine)
