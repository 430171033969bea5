"""SigLIP's pairwise sigmoid loss in O(N) extra memory, forward AND backward (no N×N block is kept).

Math. With image features I (N, d), text features T (N, d), s = ``logit_scale`` (already
exponentiated) and b = ``logit_bias``:

    x_ij = s · I_i·T_j + b          z_ij = +1 if i == j else −1
    loss = (1/N) · Σ_ij softplus(−z_ij · x_ij)        (= OpenCLIP's ``SigLipLoss`` on one device)

Gradients (g = d loss, c = g/N): G_ij = c · (σ(x_ij) − [i == j]) = dloss/dx_ij, and

    dI = s · G · T      dT = s · Gᵀ · I      ds = Σ_ij G_ij I_i·T_j      db = Σ_ij G_ij

Algorithm: S tiles of ``chunk_size`` rows × columns; forward sums softplus per tile (the positives are
negated inside the tile, so softplus(−x) is exact, not softplus(x) − x); backward recomputes each tile
once and applies it to both dI and dT (σ(−x) on the positives, again exact). One N²d matmul forward,
three backward; memory two tiles plus O(N). A block may also be rectangular with its positives at
(i, i + k) or have none: the distributed engines (``clipfast.ops._loss_engines``) use that.

Backends (``clipfast.backend``): ``triton`` (``clipfast.kernels.sigmoid_loss``) or ``reference`` (the chunked
PyTorch path of ``clipfast.ops._sigmoid_loss_blocks``, fp32 math on any device; fp64 inputs stay fp64).
On one process the loss runs as the custom ops ``torch.ops.clipfast.sigmoid_loss`` / ``sigmoid_loss_backward``
(fake implementations + autograd: ``torch.compile(fullgraph=True)`` traces it); the distributed engines
run through ``local_sigmoid_loss``.
"""
import torch
import torch.nn.functional as F

from clipfast import backend as _backend
from clipfast.ops._checks import acc_dtype, check_chunk, check_features, check_scalar
from clipfast.ops._loss_engines import LocalSigmoidEngine

__all__ = ["sigmoid_loss", "sigmoid_loss_ref", "local_sigmoid_loss"]


def sigmoid_loss_ref(image_features, text_features, logit_scale, logit_bias):
    """Full N×N SigLIP loss in plain differentiable PyTorch (the oracle; small N only).

    Returns ``−Σ log σ(z ∘ (s·I·Tᵀ + b)) / N`` with z = 2·eye − 1, in the features' dtype.
    """
    logits = logit_scale * image_features @ text_features.T + logit_bias
    n = logits.shape[0]
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / n


def _loss_forward(engine, a, b, scale, bias):
    return (engine.forward(a, b, scale, bias) / a.shape[0]).to(acc_dtype(a))


def _loss_backward(engine, grad, a, b, scale, bias):
    da, db, dscale, dbias = engine.backward(a, b, scale, bias, grad.double() / a.shape[0])
    da = da.to(a.dtype)  # frees da's fp32 accumulator before db's 16-bit copy is made
    return (da, db.to(b.dtype), dscale.to(scale.dtype).reshape(scale.shape),
            dbias.to(bias.dtype).reshape(bias.shape))


@torch.library.custom_op("clipfast::sigmoid_loss", mutates_args=())
def _sigmoid_loss_op(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                     chunk_size: int | None, backend: str) -> torch.Tensor:
    """0-d loss on one process, in the compute dtype."""
    return _loss_forward(LocalSigmoidEngine(chunk_size, backend), a, b, scale, bias)


@_sigmoid_loss_op.register_fake
def _(a, b, scale, bias, chunk_size, backend):
    return a.new_empty((), dtype=acc_dtype(a))


@torch.library.custom_op("clipfast::sigmoid_loss_backward", mutates_args=())
def _sigmoid_loss_backward_op(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                              bias: torch.Tensor, chunk_size: int | None,
                              backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(da, db, dscale, dbias) of ``grad``·loss, each tile recomputed once."""
    return _loss_backward(LocalSigmoidEngine(chunk_size, backend), grad, a, b, scale, bias)


@_sigmoid_loss_backward_op.register_fake
def _(grad, a, b, scale, bias, chunk_size, backend):
    return a.new_empty(a.shape), b.new_empty(b.shape), scale.new_empty(scale.shape), bias.new_empty(bias.shape)


def _setup_context(ctx, inputs, output):
    a, b, scale, bias, chunk_size, backend = inputs
    ctx.save_for_backward(a, b, scale, bias)
    ctx.args = (chunk_size, backend)


def _backward_rule(ctx, grad):
    return (*_sigmoid_loss_backward_op(grad, *ctx.saved_tensors, *ctx.args), None, None)


_sigmoid_loss_op.register_autograd(_backward_rule, setup_context=_setup_context)


class _EngineSigmoidLoss(torch.autograd.Function):
    """The loss around any engine (the distributed ones: their collectives are not traced)."""

    @staticmethod
    def forward(ctx, a, b, scale, bias, engine):
        ctx.save_for_backward(a, b, scale, bias)
        ctx.engine = engine
        return _loss_forward(engine, a, b, scale, bias)

    @staticmethod
    def backward(ctx, grad):
        return (*_loss_backward(ctx.engine, grad, *ctx.saved_tensors), None)


def local_sigmoid_loss(image_features, text_features, logit_scale, logit_bias, engine):
    """(1/B)·Σ over this process's rows of softplus(−z·x) against every column ``engine`` reaches
    (``clipfast.ops._loss_engines``); scale and bias already checked 0-d tensors."""
    return _EngineSigmoidLoss.apply(image_features, text_features, logit_scale, logit_bias, engine)


def sigmoid_loss(image_features, text_features, logit_scale, logit_bias, *, chunk_size=None):
    """SigLIP's sigmoid loss without materialising the N×N logits (forward or backward).

    Args:
        image_features: (N, d) float32/float16/bfloat16 (float64 on the chunked path).
        text_features: (N, d), same dtype/device; row i is image i's positive.
        logit_scale: 0-d tensor s, ALREADY exponentiated, or a number; finite.
        logit_bias: 0-d tensor b or a number; finite.
        chunk_size: tile edge of the chunked path (default 2048); ignored by Triton.
    Returns:
        0-d fp32 loss (fp64 for fp64 inputs) = OpenCLIP ``SigLipLoss`` on one device; gradients flow
        to both features, logit_scale and logit_bias.
    Raises:
        TypeError / ValueError naming the argument (shapes, dtypes, devices, non-finite scale/bias).
    """
    check_features(image_features, text_features)
    dev = image_features.device
    scale = check_scalar(logit_scale, dev)
    bias = check_scalar(logit_bias, dev, "logit_bias")
    check_chunk(chunk_size)
    return _sigmoid_loss_op(image_features, text_features, scale, bias, chunk_size,
                            _backend.resolve("sigmoid_loss", dev))
