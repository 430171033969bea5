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
(i, i + k) or have none: the distributed modes (``clipfast.distributed``) use that.

Backends (``clipfast.backend``): ``triton`` (``clipfast.kernels.sigmoid_loss``) or ``reference`` (the chunked
PyTorch path, fp32 math on any device; fp64 inputs stay fp64).
"""
import torch
import torch.nn.functional as F

from clipfast import backend as _backend
from clipfast.ops.contrastive_loss import _acc_dtype, _check_chunk, _check_features, check_scale, rowdot_sum

__all__ = ["sigmoid_loss", "sigmoid_loss_ref", "sigmoid_block_fwd", "sigmoid_block_bwd"]


def sigmoid_loss_ref(image_features, text_features, logit_scale, logit_bias):
    """Full N×N SigLIP loss in plain differentiable PyTorch (the oracle; small N only).

    Returns ``−Σ log σ(z ∘ (s·I·Tᵀ + b)) / N`` with z = 2·eye − 1, in the features' dtype.
    """
    logits = logit_scale * image_features @ text_features.T + logit_bias
    n = logits.shape[0]
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / n


def _select(device):
    return _backend.select("sigmoid_loss", device)


def _sig_fwd_chunked(a, b, s, bias, offset, tiles):
    """Σ_ij softplus(−z_ij·x_ij) over one block (positives at (i, i + offset); None: none), float64."""
    (m, _), n = a.shape, b.shape[0]
    tm, tn = min(tiles[0], m), min(tiles[1], n)
    acc = _acc_dtype(a)
    buf = torch.empty(tm * tn, dtype=acc, device=a.device)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for r0 in range(0, m, tm):
        ar = a[r0:r0 + tm].to(acc) * s
        for c0 in range(0, n, tn):
            bc = b[c0:c0 + tn].to(acc)
            t = buf[: ar.shape[0] * bc.shape[0]].view(ar.shape[0], bc.shape[0])
            torch.mm(ar, bc.T, out=t).add_(bias)  # x tile
            if offset is not None:
                t.diagonal(r0 + offset - c0).neg_()  # positives: −x
            total += F.softplus(t).sum().to(torch.float64)
    return total


def _sig_bwd_chunked(a, b, s, bias, c, offset, tiles):
    """(da, db, dscale, dbias) of c·Σ_ij softplus(−z_ij·x_ij) over one block; compute dtype."""
    (m, d), n = a.shape, b.shape[0]
    tm, tn = min(tiles[0], m), min(tiles[1], n)
    acc, dev = _acc_dtype(a), a.device
    gb = torch.zeros(m, d, dtype=acc, device=dev)  # (G/c)·b
    db = torch.zeros(n, d, dtype=acc, device=dev)
    dscale = torch.zeros((), dtype=torch.float64, device=dev)
    dbias = torch.zeros((), dtype=torch.float64, device=dev)
    buf = torch.empty(tm * tn, dtype=acc, device=dev)
    for r0 in range(0, m, tm):
        a_r = a[r0:r0 + tm].to(acc)
        ar = a_r * s
        rows = slice(r0, r0 + ar.shape[0])
        for c0 in range(0, n, tn):
            bc = b[c0:c0 + tn].to(acc)
            t = buf[: ar.shape[0] * bc.shape[0]].view(ar.shape[0], bc.shape[0])
            torch.mm(ar, bc.T, out=t).add_(bias)
            if offset is not None:
                diag = t.diagonal(r0 + offset - c0)
                diag.neg_()
                t.sigmoid_()
                diag.neg_()  # positives: −σ(−x) = σ(x) − 1, exact
            else:
                t.sigmoid_()
            dbias += t.sum().to(torch.float64)
            gb[rows].addmm_(t, bc)
            db[c0:c0 + bc.shape[0]].addmm_(t.T, ar, alpha=c)
        dscale += rowdot_sum(gb[rows], a_r, dtype=torch.float64)  # fp64: blocks of a ring cancel
    return gb.mul_(s * c), db, dscale * c, dbias * c


def sigmoid_block_fwd(a, b, scale, bias, positive_offset=0, *, chunk_size=None, backend=None):
    """Σ_ij softplus(−z_ij·(scale·a_i·b_j + bias)) over one block (0-d; positives at (i, i + offset),
    ``positive_offset=None`` for a negatives-only block). a (M, d), b (N, d); scale, bias 0-d tensors."""
    backend = backend or _select(a.device)
    if backend == "triton" and a.dtype != torch.float64:
        from clipfast.kernels.sigmoid_loss import sigmoid_loss_fwd

        return sigmoid_loss_fwd(a, b, scale.detach().float(), bias.detach().float(), positive_offset).sum()
    return _sig_fwd_chunked(a, b, float(scale), float(bias), positive_offset, _check_chunk(chunk_size))


def sigmoid_block_bwd(a, b, scale, bias, c, positive_offset=0, *, chunk_size=None, backend=None):
    """Gradients of c·Σ_ij softplus(−z_ij·x_ij) for one block: (da (M, d), db (N, d), dscale, dbias)."""
    backend = backend or _select(a.device)
    if backend == "triton" and a.dtype != torch.float64:
        from clipfast.kernels.sigmoid_loss import sigmoid_loss_bwd

        c = torch.as_tensor(c, dtype=torch.float32, device=a.device)
        return sigmoid_loss_bwd(a, b, scale.detach().float(), bias.detach().float(), c, positive_offset)
    return _sig_bwd_chunked(a, b, float(scale), float(bias), float(c), positive_offset, _check_chunk(chunk_size))


class LocalSigmoidEngine:
    """Single-process engine: the block is the whole batch, positives on the diagonal."""

    def __init__(self, chunk_size=None, backend=None):
        self.chunk_size, self.backend = chunk_size, backend

    def forward(self, a, b, scale, bias):
        """Σ over every block these rows meet of softplus(−z·x)."""
        return sigmoid_block_fwd(a, b, scale, bias, 0, chunk_size=self.chunk_size, backend=self.backend)

    def backward(self, a, b, scale, bias, c):
        """(da, db, dscale, dbias) of c·(that sum), with db for this process's own columns b."""
        return sigmoid_block_bwd(a, b, scale, bias, c, 0, chunk_size=self.chunk_size, backend=self.backend)


class _SigmoidLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, bias, engine):
        total = engine.forward(a, b, scale, bias)
        ctx.save_for_backward(a, b, scale, bias)
        ctx.engine = engine
        return (total / a.shape[0]).to(_acc_dtype(a))

    @staticmethod
    def backward(ctx, grad):
        a, b, scale, bias = ctx.saved_tensors
        c = grad.double() / a.shape[0]
        da, db, dscale, dbias = ctx.engine.backward(a, b, scale, bias, c)
        return (da.to(a.dtype), db.to(b.dtype), dscale.to(scale.dtype).reshape(scale.shape),
                dbias.to(bias.dtype).reshape(bias.shape), None)


def local_sigmoid_loss(image_features, text_features, logit_scale, logit_bias, engine):
    """(1/B)·Σ over this process's rows of softplus(−z·x) against every column ``engine`` reaches."""
    return _SigmoidLoss.apply(image_features, text_features, logit_scale, logit_bias, engine)


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
    _check_features(image_features, text_features)
    dev = image_features.device
    scale = check_scale(logit_scale, dev)
    bias = check_scale(logit_bias, dev, "logit_bias")
    _check_chunk(chunk_size)
    engine = LocalSigmoidEngine(chunk_size, _select(dev))
    return _SigmoidLoss.apply(image_features, text_features, scale, bias, engine)
