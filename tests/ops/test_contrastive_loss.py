"""clipfast.ops.contrastive_loss: the chunked path against the full N×N oracle, gradients of I, T and s.

Oracle: ``contrastive_loss_ref`` in float64 on the same (already rounded) features. The chunked path
computes in fp32 whatever the input dtype, so the loss and the scaled gradients are held to the fp32
tolerance in every dtype, and the gradients returned in fp16/bf16 to that dtype's tolerance.
Gradients are compared as N·grad (the gradient of the summed, not averaged, loss), so that the
absolute part of the tolerance is not larger than the values themselves.
Most tests force ``CLIPFAST_BACKEND=reference`` (the chunked PyTorch path; under the test harness CPU
tensors would otherwise go through the Triton interpreter); one runs the Triton path end to end.
"""
import pytest
import torch
import torch.nn.functional as F

from clipfast.ops._contrastive_loss_chunked import lse_fwd_chunked
from clipfast.ops.contrastive_loss import contrastive_loss, contrastive_loss_ref
from clipfast.ops._contrastive_loss_blocks import lse_block_bwd, lse_block_fwd
from tests.numerics import assert_close, assert_matches_reference


@pytest.fixture(autouse=True)
def _reference_backend(monkeypatch, request):
    if "triton_backend" not in request.node.name:
        monkeypatch.setenv("CLIPFAST_BACKEND", "reference")


def _pairs(n, d, dtype=torch.float64, noise=1.0):
    """Normalised (I, T) with matching rows correlated, like a trained model's."""
    i = F.normalize(torch.randn(n, d, dtype=torch.float64), dim=-1)
    t = F.normalize(i + noise * torch.randn(n, d, dtype=torch.float64) / d**0.5 * 4, dim=-1)
    return i.to(dtype), t.to(dtype)


def _exact(i, t, s, dtype=torch.float64):
    """Loss and (N·dI, N·dT, N·ds) of the oracle in ``dtype`` on the given (rounded) inputs."""
    i64, t64 = (x.detach().to(dtype).requires_grad_() for x in (i, t))
    s64 = torch.as_tensor(s).detach().to(dtype).requires_grad_()
    loss = contrastive_loss_ref(i64, t64, s64)
    loss.backward()
    n = i.shape[0]
    return loss.detach(), i64.grad * n, t64.grad * n, s64.grad * n


def _ours(i, t, s, **kw):
    i, t = i.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    s = torch.as_tensor(s, dtype=torch.float32).detach().clone().requires_grad_()
    loss = contrastive_loss(i, t, s, **kw)
    loss.backward()
    return loss, i.grad, t.grad, s.grad


def _check(i, t, s, **kw):
    n, dtype = i.shape[0], i.dtype
    loss, gi, gt, gs = _ours(i, t, s, **kw)
    e_loss, e_gi, e_gt, e_gs = _exact(i, t, s)
    assert loss.dtype == torch.float32 and gi.dtype == gt.dtype == dtype and gs.dtype == torch.float32
    assert_close(loss, e_loss, dtype=torch.float32, name="loss")
    ref32 = _exact(i, t, s, torch.float32)
    # d s cancels (Σ P_ij·cos_ij − mean cos_ii) by ~1e3 at s = 100: flash-attention rule against
    # PyTorch's fp32 full-matrix loss on the same inputs.
    assert_matches_reference(gs * n, ref32[3], e_gs, name="d logit_scale")
    if dtype == torch.float32:  # fp32 rounding of S at |S| ~ 100 dominates: same rule
        assert_matches_reference(gi * n, ref32[1], e_gi, name="d image_features")
        assert_matches_reference(gt * n, ref32[2], e_gt, name="d text_features")
    else:  # rounding to the output dtype dominates
        assert_close(gi * n, e_gi.to(dtype), dtype=dtype, name="d image_features")
        assert_close(gt * n, e_gt.to(dtype), dtype=dtype, name="d text_features")


@pytest.mark.parametrize("n,d", [(1, 64), (7, 512), (257, 768), (1000, 512), (4099, 64)])
def test_fp32_matches_fp64_reference(n, d):
    i, t = _pairs(n, d, torch.float32)
    _check(i, t, 1 / 0.07, chunk_size=256)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d", [(7, 64), (257, 512), (1000, 768)])
def test_half_features_at_scale_100(n, d, dtype):
    i, t = _pairs(n, d, dtype)
    _check(i, t, 100.0, chunk_size=128)


def test_default_chunk_and_large_scale_finite():
    i, t = _pairs(1500, 96, torch.float16, noise=0.1)
    loss, gi, gt, gs = _ours(i, t, 100.0)
    assert all(torch.isfinite(x).all() for x in (loss, gi, gt, gs))
    _check(i, t, 100.0)


def test_chunk_size_invariance():
    n = 131
    i, t = _pairs(n, 80, torch.float32)
    base = _ours(i, t, 30.0)
    for chunk in (3, 64, 130, 4096):
        for got, want, name in zip(_ours(i, t, 30.0, chunk_size=chunk), base, ("loss", "dI", "dT", "ds")):
            assert_close(got * (1 if name == "loss" else n), want * (1 if name == "loss" else n),
                         name=f"{name} (chunk {chunk})")


def test_non_contiguous_inputs():
    i, t = _pairs(77, 50, torch.float32)
    i_nc = i.T.contiguous().T  # column-major
    t_nc = torch.cat([t, t], dim=1)[:, ::2]  # strided along d
    assert not i_nc.is_contiguous() and not t_nc.is_contiguous()
    _check(i_nc, t_nc, 20.0, chunk_size=16)


def test_gradcheck_fp64():
    i, t = (x.requires_grad_() for x in _pairs(9, 5))
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: contrastive_loss(a, b, c, chunk_size=4), (i, t, s))


def test_matches_reference_unnormalised_features():
    i, t = torch.randn(130, 40), torch.randn(130, 40)  # |S| up to ~100s: exercises the LSE shifts
    _check(i, t, 5.0, chunk_size=32)


def test_column_underflow_recomputed_exactly():
    """Columns whose maximum lies far below the tile maximum are recomputed, not lost to underflow."""
    d = 16
    e1 = F.normalize(torch.ones(d), dim=0)
    a = F.normalize(e1 + 0.01 * torch.randn(64, d), dim=-1)  # all rows ≈ e1
    b = torch.cat([F.normalize(e1 + 0.01 * torch.randn(32, d), dim=-1),
                   F.normalize(-e1 + 0.3 * torch.randn(32, d), dim=-1)])  # half the columns ≈ −e1
    s = torch.tensor(100.0)
    lse_row, lse_col = lse_fwd_chunked(a, b, 100.0, True, True, (64, 64))
    exact = 100.0 * a.double() @ b.double().T
    assert_close(lse_col, exact.logsumexp(0), dtype=torch.float32, name="lse_col")
    assert_close(lse_row, exact.logsumexp(1), dtype=torch.float32, name="lse_row")
    assert torch.isfinite(lse_col).all()
    del s


@pytest.mark.parametrize("want_row,want_col", [(True, True), (True, False), (False, True)])
def test_lse_block_rectangular_with_grads(want_row, want_col):
    """lse_block_fwd/_bwd on a rectangular block with one direction absent and signed coefficients (the
    shapes the distributed engines and row_cross_entropy use) against autograd through the full logits."""
    a, b = torch.randn(37, 24, dtype=torch.float64), torch.randn(53, 24, dtype=torch.float64)
    s = torch.tensor(2.5, dtype=torch.float64)
    w_row, w_col = torch.randn(37, dtype=torch.float64), torch.randn(53, dtype=torch.float64)  # signed
    x = [v.clone().requires_grad_() for v in (a, b, s)]
    logits = x[2] * x[0] @ x[1].T
    want = (logits.logsumexp(1) * w_row).sum() * want_row + (logits.logsumexp(0) * w_col).sum() * want_col
    want.backward()

    lse_row, lse_col = lse_block_fwd(a, b, s, want_row=want_row, want_col=want_col, chunk_size=16)
    assert (lse_row is None) != want_row and (lse_col is None) != want_col
    got = sum((lse * w).sum() for lse, w in ((lse_row, w_row), (lse_col, w_col)) if lse is not None)
    grads = lse_block_bwd(a, b, s, lse_row, lse_col, w_row if want_row else None, w_col if want_col else None,
                          chunk_size=16)
    for o, e, name in zip((got, *grads), (want.detach(), *(v.grad for v in x)), ("objective", "da", "db", "ds")):
        assert_close(o, e, name=name)


def test_block_launcher_contract_fp32():
    """lse_block_fwd/_bwd follow the Triton launchers' contract (global LSEs, coefficients, d scale)."""
    a, b = torch.randn(45, 32), torch.randn(29, 32)
    s = torch.tensor(1.7)
    lse_row, lse_col = lse_block_fwd(a, b, s, chunk_size=8)
    exact = 1.7 * a.double() @ b.double().T
    assert_close(lse_row, exact.logsumexp(1), dtype=torch.float32, name="lse_row")
    assert_close(lse_col, exact.logsumexp(0), dtype=torch.float32, name="lse_col")
    g_row, g_col = lse_row + 0.3, lse_col - 0.2  # "global" LSEs differ from the block's
    c_row, c_col = torch.rand(45), torch.randn(29)  # one direction has negative coefficients
    da, db, dscale = lse_block_bwd(a, b, s, g_row, g_col, c_row, c_col, chunk_size=8)
    p = (c_row.double()[:, None] * torch.exp(exact - g_row.double()[:, None])
         + c_col.double()[None, :] * torch.exp(exact - g_col.double()[None, :]))
    assert_close(da, 1.7 * p @ b.double(), name="da")
    assert_close(db, 1.7 * p.T @ a.double(), name="db")
    assert_close(dscale, (p * (a.double() @ b.double().T)).sum(), dtype=torch.float32, name="dscale")


def test_triton_backend_end_to_end(monkeypatch):
    """CLIPFAST_BACKEND=triton runs the Triton launchers (interpreter on CPU) through the same op."""
    monkeypatch.setenv("CLIPFAST_BACKEND", "triton")
    from clipfast import backend

    if backend.select("contrastive_loss", torch.device("cpu")) != "triton":
        pytest.skip("Triton interpreter not available")
    i, t = _pairs(37, 64, torch.float32)
    _check(i, t, 1 / 0.07)


def test_triton_backend_scale_zero(monkeypatch):
    """logit_scale = 0 (S = 0, uniform softmax): finite d(scale) on the Triton path (issue 9: d(scale)
    was da·a / s = 0/0 = NaN), equal to the oracle's, and the reference path agrees."""
    from clipfast import backend

    i, t = _pairs(19, 32, torch.float32)
    for name in ("triton", "reference"):
        monkeypatch.setenv("CLIPFAST_BACKEND", name)
        if backend.select("contrastive_loss", torch.device("cpu")) != name:
            pytest.skip("Triton interpreter not available")
        loss, gi, gt, gs = _ours(i, t, 0.0)
        e_loss, e_gi, e_gt, e_gs = _exact(i, t, 0.0)
        assert torch.isfinite(gs), f"{name}: d logit_scale = {gs}"
        assert_close(loss, e_loss, dtype=torch.float32, name=f"{name} loss")
        assert_close(gs * 19, e_gs, dtype=torch.float32, name=f"{name} d logit_scale")
        assert_close(gi * 19, e_gi, dtype=torch.float32, name=f"{name} d image_features")
        assert_close(gt * 19, e_gt, dtype=torch.float32, name=f"{name} d text_features")


class SyncCounter:
    """Counts the aten ops that read a tensor's value on the host (``.item()``, ``float()``, ``bool()``,
    ``.tolist()``, data-dependent shapes): each is a host synchronisation on a GPU. The ops inside
    clipfast's custom ops are counted too (their Python implementation runs under a fresh copy of the mode)."""

    SYNC_OPS = ("_local_scalar_dense", "is_nonzero", "nonzero", "equal", "masked_select", "unique")

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.ops = []

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.__name__.split(".")[0] in SyncCounter.SYNC_OPS:
                    counter.ops.append(func.__name__)
                if func.namespace == "clipfast":  # run the custom op's Python implementation under the mode
                    from torch._library.custom_ops import OPDEFS

                    with _Mode():
                        return OPDEFS[func._schema.name]._init_fn(*args, **(kwargs or {}))
                return func(*args, **(kwargs or {}))

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


def test_triton_backend_no_host_sync(monkeypatch):
    """Forward + backward on the Triton path read no value on the host (on a GPU: no sync per call);
    the counter does see the reference path's reads (so it can fail)."""
    from clipfast import backend

    i, t = _pairs(33, 32, torch.float32)
    counts = {}
    for name in ("triton", "reference"):
        monkeypatch.setenv("CLIPFAST_BACKEND", name)
        if backend.select("contrastive_loss", torch.device("cpu")) != name:
            pytest.skip("Triton interpreter not available")
        x, y = i.clone().requires_grad_(), t.clone().requires_grad_()
        s = torch.tensor(20.0, requires_grad=True)
        with SyncCounter() as sync:
            contrastive_loss(x, y, s).backward()
        counts[name] = sync.ops
    assert len(counts["reference"]) > 1, "the counter saw no host read on the reference path"
    # The one read left is check_scale's host check of a CPU value (free there); for CUDA tensors it is
    # a device-side assert instead (test_gpu_no_host_sync).
    assert counts["triton"] == ["_local_scalar_dense.default"], counts["triton"]


@pytest.mark.gpu
def test_gpu_no_host_sync(monkeypatch):
    """On CUDA, forward + backward through the Triton kernels never synchronise with the host."""
    monkeypatch.setenv("CLIPFAST_BACKEND", "triton")
    i, t = (v.cuda().requires_grad_() for v in _pairs(1000, 512, torch.float32))
    s = torch.tensor(100.0, device="cuda", requires_grad=True)
    contrastive_loss(i, t, s).backward()  # compile the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        contrastive_loss(i, t, s).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_forward_without_grad_and_float_scale():
    i, t = _pairs(20, 16, torch.float32)
    with torch.no_grad():
        loss = contrastive_loss(i, t, 10.0)
    assert_close(loss, contrastive_loss_ref(i.double(), t.double(), 10.0), dtype=torch.float32, name="loss")


@pytest.mark.parametrize("case,exc,match", [
    ("n_mismatch", ValueError, "text_features: expected N = 8"),
    ("d_mismatch", ValueError, "text_features: expected feature size d = 16"),
    ("nan_scale", ValueError, "logit_scale: expected a finite value"),
    ("inf_scale", ValueError, "logit_scale: expected a finite value"),
    ("vector_scale", ValueError, "logit_scale: expected a single value"),
    ("int_features", TypeError, "image_features: expected float32"),
    ("dtype_mismatch", TypeError, "text_features: expected dtype torch.float32"),
    ("device_mismatch", ValueError, "text_features: expected device cpu"),
    ("scale_device", ValueError, "logit_scale: expected device cpu"),
    ("one_d", ValueError, "image_features: expected a 2-D tensor"),
    ("empty", ValueError, "expected at least one pair"),
    ("chunk", ValueError, "chunk_size: expected a positive int"),
    ("not_tensor", TypeError, "image_features: expected a torch.Tensor"),
])
def test_bad_inputs_name_the_argument(case, exc, match):
    i, t, s, kw = torch.randn(8, 16), torch.randn(8, 16), torch.tensor(10.0), {}
    if case == "n_mismatch":
        t = torch.randn(9, 16)
    elif case == "d_mismatch":
        t = torch.randn(8, 17)
    elif case == "nan_scale":
        s = torch.tensor(float("nan"))
    elif case == "inf_scale":
        s = torch.tensor(float("inf"))
    elif case == "vector_scale":
        s = torch.ones(2)
    elif case == "int_features":
        i = torch.ones(8, 16, dtype=torch.int64)
    elif case == "dtype_mismatch":
        t = t.half()
    elif case == "device_mismatch":
        t = torch.empty(8, 16, device="meta")
    elif case == "scale_device":
        s = torch.empty((), device="meta")
    elif case == "one_d":
        i = torch.randn(8)
    elif case == "empty":
        i, t = torch.randn(0, 16), torch.randn(0, 16)
    elif case == "chunk":
        kw = {"chunk_size": 0}
    elif case == "not_tensor":
        i = [[1.0]]
    with pytest.raises(exc, match=match):
        contrastive_loss(i, t, s, **kw)


@pytest.mark.parametrize("backend_name", ["reference", "triton"])
def test_opcheck(backend_name):
    """The custom ops (schema, fake implementation, autograd registration, AOT dispatch) on both paths."""
    from clipfast import backend
    from clipfast.ops._contrastive_loss_blocks import _row_cross_entropy_op
    from clipfast.ops.contrastive_loss import _contrastive_loss_backward_op, _contrastive_loss_op

    if backend._reason("contrastive_loss", backend_name, torch.device("cpu")) is not None:
        pytest.skip("Triton interpreter not available")
    i, t = (v.requires_grad_() for v in _pairs(13, 16, torch.float32))
    s = torch.tensor(10.0, requires_grad=True)
    torch.library.opcheck(_contrastive_loss_op, (i, t, s, 5, backend_name))
    _, lse_row, lse_col = (v.detach() for v in _contrastive_loss_op(i, t, s, None, backend_name))
    torch.library.opcheck(_contrastive_loss_backward_op,
                          (torch.tensor(1.0), i.detach(), t.detach(), s.detach(), lse_row, lse_col, None, backend_name))
    a, b = _pairs(5, 16, torch.float32)[0].requires_grad_(), t.detach().clone().requires_grad_()
    torch.library.opcheck(_row_cross_entropy_op, (a, b, s, 3, 4, backend_name))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d", [(2049, 512), (8192, 768)])
def test_gpu_triton_backend_matches_reference(monkeypatch, n, d, dtype):
    """CUDA, the public op on the Triton kernels (real tensor cores) at CLIP batch sizes, forward + backward,
    against the float64 oracle by the same rules as the CPU tests (``_check``)."""
    monkeypatch.setenv("CLIPFAST_BACKEND", "triton")
    i, t = (x.cuda() for x in _pairs(n, d, dtype))
    _check(i, t, torch.tensor(100.0, device="cuda"))


def test_triton_path_memory_at_262144():
    """The loss's Triton path at N = 262144, d = 512 bf16, counted from its allocations on meta tensors
    (nothing runs): forward ≤ 128 MiB; backward = the two fp32 gradient accumulators + one bf16 copy at a
    time + ≤ 128 MiB (the bf16 gradients are made one after the other, each freeing its accumulator)."""
    from clipfast.ops.contrastive_loss import triton_memory

    n, d, mib = 262144, 512, 2**20
    fwd, bwd = triton_memory(n, d, torch.bfloat16)
    assert fwd.peak <= 128 * mib and fwd.returned == 2 * n * 8 + 4  # the fp64 LSEs saved for backward, the loss
    assert bwd.returned == 2 * n * d * 2 + 4
    assert bwd.peak <= 2 * n * d * 4 + n * d * 2 + 128 * mib
