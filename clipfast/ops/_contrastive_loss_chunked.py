"""The chunked PyTorch block math of the contrastive loss: the CPU path, same contract as the Triton launchers.

One "block" is rows a (M, d) against columns b (N, d) with S = s·a·bᵀ; the math and the algorithm are in
``clipfast.ops.contrastive_loss``'s docstring. ``lse_fwd_chunked`` gives the row/column LSEs (float64),
``lse_bwd_chunked`` their gradients with the positives subtracted inside each tile, ``positive_dots`` and
``rowdot_sum`` the O(N·d) dot products. Tiles are ``tiles = (rows, columns)`` of S per step.
"""
import math

import torch

from clipfast.ops._checks import acc_dtype

__all__ = ["lse_fwd_chunked", "lse_bwd_chunked", "tiled_grads", "positive_dots", "rowdot_sum"]


def lse_fwd_chunked(a, b, s, want_row, want_col, tiles, positive_offset=None):
    """Row/column LSEs of S = s·a·bᵀ, tile by tile, each tile computed once; float64 out (an O(N) cost
    that keeps lse − S exact to the rounding of S itself at |S| ~ 100), None where unwanted. With
    ``positive_offset`` k, also the (M,) dots a_i·b_{i+k} (0 outside the block) in the compute dtype."""
    (m, _), n = a.shape, b.shape[0]
    if positive_offset is not None:
        pos = positive_dots(a, b, positive_offset, tiles[0])
        return (*lse_fwd_chunked(a, b, s, want_row, want_col, tiles), pos)
    tm, tn = min(tiles[0], m), min(tiles[1], n)
    acc, dev, f64 = acc_dtype(a), a.device, torch.float64
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


def positive_dots(a, b, k, chunk):
    """(M,) a_i·b_{i+k} in the compute dtype, 0 where i + k is outside [0, N); row chunks of ``chunk``."""
    (m, _), n = a.shape, b.shape[0]
    acc = acc_dtype(a)
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


def lse_bwd_chunked(a, b, s, lse_row, lse_col, coef_row, coef_col, diag, tiles):
    """(da, db, dscale) of Σ coef_row·lse_row + Σ coef_col·lse_col − c·Σ_i S_{i,i+k} (LSEs held fixed).

    da = s·G·b, db = s·Gᵀ·a, dscale = Σ_ij G_ij a_i·b_j with G = P − c·[j = i + k] (``diag`` = (k, c) or
    None) and P as in the module docstring; either direction may be None (absent). The diagonal is
    subtracted inside the tiles, so dscale's cancellation happens per element, as in PyTorch's
    softmax − one-hot. Each tile of S is recomputed once.
    """
    acc = acc_dtype(a)
    use_row, use_col = lse_row is not None, lse_col is not None
    f = _coef_factor(coef_row if use_row else None, coef_col if use_col else None)
    sh_row = _shift(lse_row, coef_row, f, acc) if use_row else None
    sh_col = _shift(lse_col, coef_col, f, acc) if use_col else None
    scratch = []

    def g_tile(t, r0, c0):  # S tile -> (G/f) tile, in place
        rows, cols = slice(r0, r0 + t.shape[0]), slice(c0, c0 + t.shape[1])
        if use_row and use_col:
            if not scratch:
                scratch.append(torch.empty(t.numel(), dtype=acc, device=a.device))
            e = scratch[0][: t.numel()].view(t.shape)
            _exp_term(t, e, sh_row, rows, 1)
            _exp_term(t, t, sh_col, cols, 0)
            t.add_(e)  # P tile
        elif use_col:
            _exp_term(t, t, sh_col, cols, 0)
        else:
            _exp_term(t, t, sh_row, rows, 1)
        if diag is not None:
            _sub_diag(t, r0 + diag[0] - c0, r0, diag[1], f)

    pb, db, dscale = tiled_grads(a, b, s, tiles, g_tile, db_alpha=f)
    return pb.mul_(s * f), db, dscale * f


def tiled_grads(a, b, s, tiles, g_tile, db_alpha):
    """The backward matmuls of a block, tile by tile: each S = s·a·bᵀ tile is recomputed once, turned into
    a gradient tile G by ``g_tile(t, r0, c0)`` (in place; t is rows r0… × columns c0…), and applied to both
    sides. Returns (G·b (M, d), α·s·Gᵀ·a (N, d), Σ_i (G·b)_i·a_i in fp64) with α = ``db_alpha``; the
    caller scales the first and last by its own factors."""
    (m, d), n = a.shape, b.shape[0]
    tm, tn = min(tiles[0], m), min(tiles[1], n)
    acc, dev = acc_dtype(a), a.device
    gb = torch.zeros(m, d, dtype=acc, device=dev)
    db = torch.zeros(n, d, dtype=acc, device=dev)
    buf = torch.empty(tm * tn, dtype=acc, device=dev)
    dscale = torch.zeros((), dtype=torch.float64, device=dev)
    for r0 in range(0, m, tm):
        a_r = a[r0:r0 + tm].to(acc)
        ar = a_r * s
        rows = slice(r0, r0 + ar.shape[0])
        for c0 in range(0, n, tn):
            bc = b[c0:c0 + tn].to(acc)
            t = buf[: ar.shape[0] * bc.shape[0]].view(ar.shape[0], bc.shape[0])
            torch.mm(ar, bc.T, out=t)  # S tile
            g_tile(t, r0, c0)
            gb[rows].addmm_(t, bc)
            db[c0:c0 + bc.shape[0]].addmm_(t.T, ar, alpha=db_alpha)  # s·Gᵀ·a (ar carries s)
        dscale += rowdot_sum(gb[rows], a_r, dtype=torch.float64)  # fp64: blocks of a ring cancel
    return gb, db, dscale


def rowdot_sum(a, b, chunk=256, dtype=None):
    """Σ_i a_i·b_i in ``dtype`` (default fp32, fp64 for fp64 inputs), in row chunks (no (N, d) temporary)."""
    acc = dtype or acc_dtype(a)
    total = torch.zeros((), dtype=acc, device=a.device)
    for r0 in range(0, a.shape[0], chunk):
        total += (a[r0:r0 + chunk].to(acc) * b[r0:r0 + chunk].to(acc)).sum()
    return total
