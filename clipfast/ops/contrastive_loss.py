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
distributed engines in ``clipfast.ops._loss_engines`` use rectangular ones):

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

Backends (``clipfast.backend.resolve("contrastive_loss", device)``): ``triton`` runs the block math in
``clipfast.kernels.contrastive_loss`` (CUDA, or CPU under ``TRITON_INTERPRET=1``); ``reference`` is the
chunked PyTorch path above (``clipfast.ops._contrastive_loss_chunked``, fp32 math on any device). Both
compute in fp32 whatever the input dtype, so fp16/bf16 features at s = 100 give finite, accurate losses;
gradients come back in the input dtype.

Files: ``_checks`` (input checks), ``_contrastive_loss_chunked`` (the chunked math),
``_contrastive_loss_blocks`` (one block on a backend; ``row_cross_entropy``), ``_loss_engines`` (where the
global LSEs come from: one process, or the ring), this file (the loss around an engine, the custom ops).
On one process the loss runs as the custom ops ``torch.ops.clipfast.contrastive_loss`` /
``contrastive_loss_backward`` (fake implementations + autograd), so ``torch.compile(fullgraph=True)``
traces a training step through it; the distributed engines run through ``local_contrastive_loss``.
"""
import torch
import torch.nn.functional as F

from clipfast import backend as _backend
from clipfast.ops._checks import acc_dtype, check_chunk, check_features, check_scalar
from clipfast.ops._contrastive_loss_chunked import rowdot_sum
from clipfast.ops._loss_engines import LocalContrastiveEngine

__all__ = ["contrastive_loss", "contrastive_loss_ref", "local_contrastive_loss"]


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


def _loss_forward(engine, a, b, scale):
    """(loss, lse_row, lse_col) of ½·(mean_i(lse_row_i − S_ii) + mean_j(lse_col_j − S_jj)) over the local
    pairs, with the global LSEs from ``engine`` (a ``_loss_engines.ContrastiveEngine``); loss in the compute
    dtype, LSEs float64."""
    lse_row, lse_col, pos = engine.forward(a, b, scale)
    diag = rowdot_sum(a, b, dtype=torch.float64) if pos is None else pos.double().sum()  # Σ_i a_i·b_i
    n = a.shape[0]
    lse_row, lse_col = lse_row.double(), lse_col.double()
    loss = (lse_row.sum() + lse_col.sum()) / (2 * n) - scale.double() * diag / n
    return loss.to(acc_dtype(a)), lse_row, lse_col


def _loss_backward(engine, grad, a, b, scale, lse_row, lse_col):
    """(da, db, dscale) of ``grad``·loss, in the dtypes of a, b and scale (gradients accumulated in place)."""
    n = a.shape[0]
    g = grad.to(acc_dtype(a))
    coef = (g * 0.5 / n).expand(n).contiguous()
    da, db, dscale = engine.backward(a, b, scale, lse_row, lse_col, coef, coef, g / n)
    da = da.to(a.dtype)  # frees da's fp32 accumulator before db's 16-bit copy is made
    return da, db.to(b.dtype), dscale.to(scale.dtype).reshape(scale.shape)


@torch.library.custom_op("clipfast::contrastive_loss", mutates_args=())
def _contrastive_loss_op(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, chunk_size: int | None,
                         backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss 0-d, lse_row (N,) float64, lse_col (N,) float64) on one process; the LSEs are saved for backward."""
    return _loss_forward(LocalContrastiveEngine(chunk_size, backend), a, b, scale)


@_contrastive_loss_op.register_fake
def _(a, b, scale, chunk_size, backend):
    n, f64 = a.shape[0], torch.float64
    return a.new_empty((), dtype=acc_dtype(a)), a.new_empty(n, dtype=f64), a.new_empty(n, dtype=f64)


@torch.library.custom_op("clipfast::contrastive_loss_backward", mutates_args=())
def _contrastive_loss_backward_op(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                                  lse_row: torch.Tensor, lse_col: torch.Tensor, chunk_size: int | None,
                                  backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(da, db, dscale) of ``grad``·loss, recomputing each tile once from the saved LSEs."""
    return _loss_backward(LocalContrastiveEngine(chunk_size, backend), grad, a, b, scale, lse_row, lse_col)


@_contrastive_loss_backward_op.register_fake
def _(grad, a, b, scale, lse_row, lse_col, chunk_size, backend):
    return a.new_empty(a.shape), b.new_empty(b.shape), scale.new_empty(scale.shape)


def _setup_context(ctx, inputs, output):
    a, b, scale, chunk_size, backend = inputs
    ctx.save_for_backward(a, b, scale, output[1], output[2])
    ctx.args = (chunk_size, backend)


def _backward_rule(ctx, grad, _grad_lse_row, _grad_lse_col):
    a, b, scale, lse_row, lse_col = ctx.saved_tensors
    return (*_contrastive_loss_backward_op(grad, a, b, scale, lse_row, lse_col, *ctx.args), None, None)


_contrastive_loss_op.register_autograd(_backward_rule, setup_context=_setup_context)


class _EngineContrastiveLoss(torch.autograd.Function):
    """The loss around any engine (the distributed ones: their collectives are not traced)."""

    @staticmethod
    def forward(ctx, a, b, scale, engine):
        loss, lse_row, lse_col = _loss_forward(engine, a, b, scale)
        ctx.save_for_backward(a, b, scale, lse_row, lse_col)
        ctx.engine = engine
        return loss

    @staticmethod
    def backward(ctx, grad):
        return (*_loss_backward(ctx.engine, grad, *ctx.saved_tensors), None)


def local_contrastive_loss(image_features, text_features, logit_scale, engine):
    """The loss over this process's pairs with global LSEs from ``engine`` (``clipfast.ops._loss_engines``).

    ``logit_scale`` must already be a checked 0-d tensor (``_checks.check_scalar``)."""
    return _EngineContrastiveLoss.apply(image_features, text_features, logit_scale, engine)


def triton_memory(n, d, dtype=torch.bfloat16):
    """(forward, backward) ``LauncherMemory`` of this loss on the Triton backend at batch N, feature size d:
    every allocation of ``_loss_forward`` / ``_loss_backward`` counted on ``meta`` tensors
    (``clipfast.kernels._launcher_memory``): nothing is computed, any N, no GPU. The backward's ``returned``
    holds the two feature gradients in ``dtype`` (and d scale); its peak, their fp32 accumulators."""
    from clipfast.kernels._launcher_memory import launcher_memory

    engine, meta = LocalContrastiveEngine(backend="triton"), dict(device="meta")
    a, scale = torch.empty(n, d, dtype=dtype, **meta), torch.empty((), **meta)
    lse = torch.empty(n, dtype=torch.float64, **meta)
    return (launcher_memory(_loss_forward, engine, a, a, scale),
            launcher_memory(_loss_backward, engine, torch.empty((), **meta), a, a, scale, lse, lse))


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
    check_features(image_features, text_features)
    scale = check_scalar(logit_scale, image_features.device)
    check_chunk(chunk_size)
    backend = _backend.resolve("contrastive_loss", image_features.device)
    return _contrastive_loss_op(image_features, text_features, scale, chunk_size, backend)[0]
