"""clipfast.ops.sigmoid_loss: the chunked SigLIP loss against the full N×N oracle (float64 on the same
rounded inputs), gradients of I, T, logit_scale and logit_bias; blocks with shifted / no positives."""
import pytest
import torch
import torch.nn.functional as F

from clipfast.ops.sigmoid_loss import sigmoid_loss, sigmoid_loss_ref
from clipfast.ops._sigmoid_loss_blocks import sigmoid_block_bwd, sigmoid_block_fwd
from tests.numerics import assert_close, assert_matches_reference


@pytest.fixture(autouse=True)
def _reference_backend(monkeypatch):
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")


def _pairs(n, d, dtype=torch.float32):
    i = F.normalize(torch.randn(n, d, dtype=torch.float64), dim=-1)
    return i.to(dtype), F.normalize(i + torch.randn(n, d, dtype=torch.float64) / d**0.5 * 3, dim=-1).to(dtype)


def _grads(fn, inputs, dtype=None):
    x = [v.detach().to(dtype or v.dtype).clone().requires_grad_() for v in inputs]
    loss = fn(*x)
    loss.backward()
    return [loss.detach()] + [v.grad for v in x]


NAMES = ("loss", "d image_features", "d text_features", "d logit_scale", "d logit_bias")


@pytest.mark.parametrize("n,d,scale,bias", [(1, 64, 10.0, -10.0), (7, 512, 10.0, -10.0), (257, 768, 100.0, -5.0),
                                            (1000, 64, 3.0, 2.0)])
def test_fp32_matches_reference(n, d, scale, bias):
    i, t = _pairs(n, d)
    inputs = (i, t, torch.tensor(scale), torch.tensor(bias))
    ours = _grads(lambda *x: sigmoid_loss(*x, chunk_size=100), inputs)
    ref32 = _grads(sigmoid_loss_ref, inputs)
    exact = _grads(sigmoid_loss_ref, inputs, torch.float64)
    for name, o, r, e in zip(NAMES, ours, ref32, exact):
        assert_matches_reference(o, r, e, name=name)


def _assert_half_grads(ours, exact, dtype):
    """16-bit features: loss and d(scale), d(bias) in fp32 to fp32's tolerance; feature gradients in the
    input dtype to its tolerance."""
    assert ours[0].dtype == torch.float32 and ours[1].dtype == dtype
    assert_close(ours[0], exact[0], dtype=torch.float32, name="loss")
    for name, o, e in zip(NAMES[1:3], ours[1:3], exact[1:3]):
        assert_close(o, e.to(dtype), dtype=dtype, name=name)
    for name, o, e in zip(NAMES[3:], ours[3:], exact[3:]):
        assert_close(o, e, dtype=torch.float32, name=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_features_at_scale_100(dtype):
    i, t = _pairs(300, 128, dtype)
    inputs = (i, t, torch.tensor(100.0), torch.tensor(-10.0))
    ours = _grads(lambda *x: sigmoid_loss(*x, chunk_size=64), inputs)
    exact = _grads(sigmoid_loss_ref, inputs, torch.float64)
    assert all(torch.isfinite(g).all() for g in ours)
    _assert_half_grads(ours, exact, dtype)


def test_gradcheck_fp64():
    i, t = _pairs(9, 5, torch.float64)
    x = [i.requires_grad_(), t.requires_grad_(), torch.tensor(2.0, dtype=torch.float64, requires_grad=True),
         torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *v: sigmoid_loss(*v, chunk_size=4), x)


def test_chunk_size_invariance_and_non_contiguous():
    i, t = _pairs(77, 50)
    base = _grads(sigmoid_loss, (i, t, torch.tensor(10.0), torch.tensor(-4.0)))
    i_nc, t_nc = i.T.contiguous().T, torch.stack([t, torch.zeros_like(t)], 2).flatten(1)[:, ::2]  # stride 2 along d
    assert torch.equal(t_nc, t) and not t_nc.is_contiguous()
    for chunk in (3, 76):
        got = _grads(lambda *x, chunk=chunk: sigmoid_loss(*x, chunk_size=chunk), (i_nc, t_nc, torch.tensor(10.0), torch.tensor(-4.0)))
        for name, o, e in zip(NAMES, got, base):
            assert_close(o, e, name=f"{name} (chunk {chunk})")


@pytest.mark.parametrize("offset", [None, 0, 5, -3])
def test_block_with_shifted_or_no_positives(offset):
    """Rectangular blocks (the distributed modes): positives at (i, i + offset), or none."""
    a, b = torch.randn(13, 8, dtype=torch.float64), torch.randn(21, 8, dtype=torch.float64)
    s, bias, c = torch.tensor(1.5, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64), 0.3
    x = [v.clone().requires_grad_() for v in (a, b, s, bias)]
    logits = x[2] * x[0] @ x[1].T + x[3]
    z = -torch.ones_like(logits)
    if offset is not None:
        z.diagonal(offset).fill_(1.0)
    total = -F.logsigmoid(z * logits).sum()
    (c * total).backward()
    assert_close(sigmoid_block_fwd(a, b, s, bias, offset, chunk_size=4), total.detach(), name="block sum")
    got = sigmoid_block_bwd(a, b, s, bias, c, offset, chunk_size=4)
    for name, o, v in zip(("da", "db", "dscale", "dbias"), got, x):
        assert_close(o, v.grad, name=name)


@pytest.mark.parametrize("case,exc,match", [
    ("n_mismatch", ValueError, "text_features: expected N = 8"),
    ("nan_bias", ValueError, "logit_bias: expected a finite value"),
    ("inf_scale", ValueError, "logit_scale: expected a finite value"),
    ("dtype", TypeError, "image_features: expected float32"),
])
def test_bad_inputs_name_the_argument(case, exc, match):
    i, t, s, b = torch.randn(8, 16), torch.randn(8, 16), torch.tensor(10.0), torch.tensor(-10.0)
    if case == "n_mismatch":
        t = torch.randn(9, 16)
    elif case == "nan_bias":
        b = torch.tensor(float("nan"))
    elif case == "inf_scale":
        s = torch.tensor(float("inf"))
    elif case == "dtype":
        i = i.to(torch.int32)
    with pytest.raises(exc, match=match):
        sigmoid_loss(i, t, s, b)


def test_triton_backend_end_to_end(monkeypatch):
    """CLIPFAST_BACKEND=triton runs clipfast.kernels.sigmoid_loss (interpreter on CPU) through the same op."""
    from clipfast import backend

    monkeypatch.setenv("CLIPFAST_BACKEND", "triton")
    if backend.select("sigmoid_loss", torch.device("cpu")) != "triton":
        pytest.skip("Triton interpreter not available")
    i, t = _pairs(37, 64)
    inputs = (i, t, torch.tensor(10.0), torch.tensor(-10.0))
    ours = _grads(sigmoid_loss, inputs)
    ref32 = _grads(sigmoid_loss_ref, inputs)
    exact = _grads(sigmoid_loss_ref, inputs, torch.float64)
    for name, o, r, e in zip(NAMES, ours, ref32, exact):
        assert_matches_reference(o, r, e, name=name)




@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("scale,bias,m,offset", [(10.0, -10.0, 1, None), (10.0, -14.0, 1, None),
                                                 (10.0, -10.0, 40, 0), (100.0, -60.0, 1, None),
                                                 (100.0, 30.0, 40, 0), (100.0, -30.0, 40, 0)])
def test_fp32_matches_fp64_relative(backend, scale, bias, m, offset):
    """SigLIP's initial bias −10 (negatives' terms softplus(x) ≈ e^x ≈ 1e-8…1e-4, where log(1 + e) loses
    up to 1 % per term and drops terms below 2⁻²⁴) and large |logits| (−60: every term below 1e-20, all
    rounded to 0 by log(1 + e); ±30). A one-row negatives-only block is one row's sum, where those errors
    do not average out. fp32 within 1e-6 relative of float64 on the same inputs, on both paths; at
    |x| ≈ 60 the fp32 rounding of x itself (|x|·2⁻²⁴ ≈ 4e-6 → relative error of e^x) allows 2e-5."""
    from clipfast import backend as _backend

    if backend == "triton" and _backend._reason("sigmoid_loss", "triton", torch.device("cpu")) is not None:
        pytest.skip("Triton interpreter not available")
    n, d = 200 if offset is None else m, 32
    a = F.normalize(torch.randn(m, d, dtype=torch.float64), dim=-1).float()
    b = F.normalize(torch.randn(n, d, dtype=torch.float64), dim=-1).float()
    s, bb = torch.tensor(scale), torch.tensor(bias)
    total = sigmoid_block_fwd(a, b, s, bb, offset, backend=backend)
    x = scale * a.double() @ b.double().T + bias
    z = -torch.ones_like(x) if offset is None else 2 * torch.eye(m, dtype=torch.float64) - 1
    exact = F.softplus(-z * x).sum()
    rel = abs(total.double() - exact).item() / exact.item()
    tol = 2e-5 if abs(bias) > 50 else 1e-6
    assert rel <= tol, f"relative error {rel:.2e} (fp32 {total.item():.9e}, fp64 {exact.item():.9e})"


@pytest.mark.parametrize("backend_name", ["reference", "triton"])
def test_opcheck(backend_name):
    """The custom ops (schema, fake implementation, autograd registration, AOT dispatch) on both paths."""
    from clipfast import backend
    from clipfast.ops.sigmoid_loss import _sigmoid_loss_backward_op, _sigmoid_loss_op

    if backend._reason("sigmoid_loss", backend_name, torch.device("cpu")) is not None:
        pytest.skip("Triton interpreter not available")
    i, t = (v.float().requires_grad_() for v in _pairs(13, 16))
    s, b = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    torch.library.opcheck(_sigmoid_loss_op, (i, t, s, b, 5, backend_name))
    torch.library.opcheck(_sigmoid_loss_backward_op,
                          (torch.tensor(1.0), i.detach(), t.detach(), s.detach(), b.detach(), None, backend_name))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tf32", [(torch.float32, False), (torch.float32, True), (torch.float16, False),
                                        (torch.bfloat16, False)])
@pytest.mark.parametrize("n,d", [(1000, 512), (4097, 768)])
def test_gpu_triton_matches_reference(monkeypatch, n, d, dtype, tf32):
    """CUDA, the public op on the Triton kernels at CLIP batch sizes: loss and all four gradients against the
    float64 full matrix — fp32 by the flash-attention rule (also with TF32 allowed: the kernels' tf32x3 dots,
    against PyTorch's ieee fp32), fp16/bf16 as ``test_half_features_at_scale_100``."""
    from clipfast import backend
    from clipfast.kernels._common import fp32_precision

    monkeypatch.setenv("CLIPFAST_BACKEND", "triton")
    assert backend.select("sigmoid_loss", torch.device("cuda")) == "triton"
    i, t = (v.cuda() for v in _pairs(n, d, dtype))
    inputs = (i, t, torch.tensor(10.0, device="cuda"), torch.tensor(-10.0, device="cuda"))
    with fp32_precision("tf32" if tf32 else "ieee"):
        ours = _grads(sigmoid_loss, inputs)
    exact = _grads(sigmoid_loss_ref, inputs, torch.float64)
    assert all(torch.isfinite(g).all() for g in ours)
    if dtype == torch.float32:
        for name, o, r, e in zip(NAMES, ours, _grads(sigmoid_loss_ref, inputs), exact):
            assert_matches_reference(o, r, e, name=name)
        return
    _assert_half_grads(ours, exact, dtype)
