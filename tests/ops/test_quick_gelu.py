"""quick_gelu: y = q(x + b), q(z) = z * sigmoid(1.702 z) — Triton (interpreter), C++ extension and the
public op against the PyTorch reference, in the dtypes users run, plus gradcheck, odd shapes,
non-contiguous inputs, bad inputs, torch.compile/opcheck and what the fused path saves for backward."""
import pytest
import torch

from clipfast import _extension
from clipfast.ops.quick_gelu import _quick_gelu_op, quick_gelu, quick_gelu_ref
from tests.numerics import assert_close, assert_matches_reference

HAS_EXT = _extension.load() is not None and hasattr(torch.ops.clipfast, "quick_gelu_fwd")
needs_ext = pytest.mark.skipif(not HAS_EXT, reason=f"clipfast._C not loaded: {_extension.load_error()}")
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _inputs(shape, dtype, bias=True, device="cpu", scale=3.0):
    x = (torch.randn(shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    b = torch.randn(shape[-1], dtype=torch.float64).to(device=device, dtype=dtype) if bias else None
    g = torch.randn(shape, dtype=torch.float64).to(device=device, dtype=dtype)
    return x, b, g


def _reference_grads(x, b, g, dtype):
    """(y, grad_x, grad_bias) of the PyTorch reference computed in ``dtype``."""
    xr = x.detach().to(dtype).requires_grad_()
    br = b.detach().to(dtype).requires_grad_() if b is not None else None
    y = quick_gelu_ref(xr, br)
    y.backward(g.to(dtype))
    return y.detach(), xr.grad, br.grad if br is not None else None


def _check_against_reference(out, x, b, g):
    """Forward and gradients (out = (y, grad_x, grad_bias)) vs the reference: the flash-attention rule
    for fp32/fp16, the bf16 table tolerance (the interpreter truncates bf16 stores) for bf16."""
    exact = _reference_grads(x, b, g, torch.float64)
    same = _reference_grads(x, b, g, x.dtype)
    for name, o, e, s in zip(("y", "grad_x", "grad_bias"), out, exact, same):
        if e is None:
            assert o is None or o.numel() == 0, name
            continue
        assert o.dtype == x.dtype, f"{name}: dtype {o.dtype} != {x.dtype}"
        if x.dtype == torch.bfloat16:
            # grad_bias sums M values: compare relative to its magnitude.
            scale = max(1.0, e.abs().max().item()) if name == "grad_bias" else 1.0
            assert_close(o / scale, e / scale, dtype=torch.bfloat16, name=name)
        else:
            assert_matches_reference(o, s, e, name=name)


def _run_op(x, b, g, backend):
    """(y, grad_x, grad_bias) of the custom op on ``backend``."""
    xo = x.detach().requires_grad_()
    bo = b.detach().requires_grad_() if b is not None else None
    y = _quick_gelu_op(xo, bo, backend)
    y.backward(g)
    return y.detach(), xo.grad, bo.grad if bo is not None else None


# --- Triton kernels through the interpreter ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 7, 37), (2, 50, 300), (1, 1)], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_triton_matches_reference(dtype, shape, bias):
    x, b, g = _inputs(shape, dtype, bias)
    _check_against_reference(_run_op(x, b, g, "triton"), x, b, g)


@pytest.mark.parametrize("shape", [(3, 77, 3072), (5, 50, 3071)], ids=str)
def test_triton_clip_shapes_fp32(shape):
    x, b, g = _inputs(shape, torch.float32)
    _check_against_reference(_run_op(x, b, g, "triton"), x, b, g)


def test_triton_bias_grad_uses_several_row_splits():
    # 600 rows at BLOCK_M 16 -> rows_per_split 16 and 38 splits: the partial-sum reduction is exercised.
    from clipfast.kernels import quick_gelu as kernels

    per, splits = kernels._row_splits(600, 16)
    assert splits > 1 and per % 16 == 0
    x, b, g = _inputs((600, 24), torch.float32)
    _check_against_reference(_run_op(x, b, g, "triton"), x, b, g)


def test_bias_row_split_bound_is_one_value():
    """The Triton backward's MAX_ROW_SPLITS and the C++/CUDA kBiasRowBlocksMax bound the same buffer (the
    (splits, N) fp32 bias-gradient partials): one value, kept equal here (the .cuh is torch-free C++ that
    Python can't import, so the two are tied by this test)."""
    import pathlib
    import re

    from clipfast.kernels import quick_gelu as kernels

    header = pathlib.Path(__file__).resolve().parents[2] / "csrc" / "quick_gelu.cuh"
    (value,) = re.findall(r"constexpr int64_t kBiasRowBlocksMax = (\d+);", header.read_text())
    assert int(value) == kernels.MAX_ROW_SPLITS
    assert kernels._row_splits(10**6, 16)[1] <= kernels.MAX_ROW_SPLITS


# --- C++ extension (the CPU kernel that shares its math with the CUDA kernel) -----------------------

@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(
    ("shape", "bias"),
    [((3, 77, 3072), True), ((5, 50, 3071), True), ((7, 33), True), ((7, 33), False), ((1, 1), False)],
    ids=str,
)
def test_extension_matches_reference(dtype, shape, bias):
    x, b, g = _inputs(shape, dtype, bias)
    _check_against_reference(_run_op(x, b, g, "extension"), x, b, g)


@needs_ext
def test_extension_gradcheck_fp64():
    x = torch.randn(4, 5, 19, dtype=torch.float64, requires_grad=True)
    b = torch.randn(19, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: _quick_gelu_op(x, b, "extension"), (x, b))


@needs_ext
def test_extension_exp_is_accurate_over_the_whole_range():
    # The CPU kernel uses its own vectorizable exp; the activation must stay within fp32 rounding
    # everywhere, including where sigmoid saturates and underflows.
    z = torch.linspace(-120, 120, 200_001, dtype=torch.float32)
    y = torch.ops.clipfast.quick_gelu_fwd(z, None)
    exact = quick_gelu_ref(z.double())
    assert_close(y, exact, name="y")
    gx, _ = torch.ops.clipfast.quick_gelu_bwd(torch.ones_like(z), z, None)
    zr = z.double().requires_grad_()
    quick_gelu_ref(zr).sum().backward()
    assert_close(gx, zr.grad, name="grad_x")


@needs_ext
def test_extension_bias_grad_is_deterministic():
    x, b, g = _inputs((3000, 40), torch.float32)
    first = torch.ops.clipfast.quick_gelu_bwd(g, x, b)[1]
    for _ in range(3):
        assert torch.equal(torch.ops.clipfast.quick_gelu_bwd(g, x, b)[1], first)


# --- Both fused backends -----------------------------------------------------------------------------

BACKENDS = ["triton", pytest.param("extension", marks=needs_ext)]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_values_match_reference(backend):
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), -100.0, 100.0, 0.0, -0.5, 88.0]])
    y, gx, _ = _run_op(x, None, torch.ones_like(x), backend)
    xr = x.clone().requires_grad_()
    yr = quick_gelu_ref(xr)
    yr.sum().backward()
    assert_close(y, yr, name="y")
    assert_close(gx, xr.grad, name="grad_x")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    base, bias_base, g_base = _inputs((6, 40, 70), torch.float32)
    cases = [
        (base.transpose(0, 1), bias_base, g_base.transpose(0, 1)),  # leading dims permuted
        (base[:, ::2, :35], bias_base[::2].contiguous()[:35], g_base[:, ::2, :35]),  # sliced rows/cols
        (base[..., ::2], bias_base[::2], g_base[..., ::2]),  # strided last dim and bias
    ]
    for x, b, g in cases:
        assert not x.is_contiguous()
        _check_against_reference(_run_op(x, b, g, backend), x, b, g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input(backend):
    x, b, g = _inputs((0, 16), torch.float32)
    y, gx, gb = _run_op(x, b, g, backend)
    assert y.shape == (0, 16) and gx.shape == (0, 16)
    assert torch.equal(gb, torch.zeros(16))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    x = torch.randn(3, 5, 20, requires_grad=True)
    b = torch.randn(20, requires_grad=True)
    torch.library.opcheck(_quick_gelu_op, (x, b, backend))
    torch.library.opcheck(_quick_gelu_op, (torch.randn(6, 20, requires_grad=True), None, backend))


@pytest.mark.parametrize("backend", ["triton", pytest.param("extension", marks=needs_ext), "reference"])
def test_public_op_under_torch_compile(backend, monkeypatch):
    monkeypatch.setenv("CLIPFAST_BACKEND", backend)
    torch._dynamo.reset()
    x = torch.randn(4, 7, 33, requires_grad=True)
    b = torch.randn(33, requires_grad=True)
    compiled = torch.compile(lambda x, b: quick_gelu(x, b) * 2, fullgraph=True, backend="aot_eager")
    y = compiled(x, b)
    y.sum().backward()
    xr, br = x.detach().requires_grad_(), b.detach().requires_grad_()
    (quick_gelu_ref(xr, br) * 2).sum().backward()
    assert_close(y, quick_gelu_ref(x, b) * 2, name="y")
    assert_close(x.grad, xr.grad, name="grad_x")
    assert_close(b.grad, br.grad, name="grad_bias")
    torch._dynamo.reset()


def _saved_bytes(fn, *args):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(saved)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_path_saves_only_x_and_bias(backend):
    x = torch.randn(8, 64, requires_grad=True)
    b = torch.randn(64, requires_grad=True)
    fused = _saved_bytes(_quick_gelu_op, x, b, backend)
    assert fused == (x.numel() + b.numel()) * 4
    assert _saved_bytes(quick_gelu_ref, x, b) >= 2 * x.numel() * 4  # eager keeps z and sigmoid(1.702 z)


# --- Public op: dispatch and bad inputs -------------------------------------------------------------

def test_public_op_follows_forced_backend(monkeypatch):
    x, b, _ = _inputs((4, 9), torch.float32)
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")
    assert quick_gelu(x.requires_grad_(), b).grad_fn.name() == "MulBackward0"
    monkeypatch.setenv("CLIPFAST_BACKEND", "triton")
    y = quick_gelu(x, b)
    assert "quick_gelu" in y.grad_fn.name()
    assert_close(y, quick_gelu_ref(x, b), name="y")


def test_reference_gradcheck_fp64():
    x = torch.randn(3, 11, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(quick_gelu_ref, (x, b))


def test_public_op_fp64_is_exact():
    x, b, _ = _inputs((5, 13), torch.float64)
    assert_close(quick_gelu(x, b), quick_gelu_ref(x, b), name="y")


@pytest.mark.parametrize(
    ("x", "bias", "exc", "words"),
    [
        (torch.randn(4, 8), torch.randn(7), ValueError, "bias: expected shape (8,)"),
        (torch.randn(4, 8), torch.randn(2, 4), ValueError, "bias: expected shape (8,)"),
        (torch.randn(4, 8), torch.randn(8, dtype=torch.float64), TypeError, "bias: expected dtype torch.float32"),
        (torch.randn(4, 8), torch.randn(8, device="meta"), ValueError, "bias: expected device cpu"),
        (torch.randint(0, 3, (4, 8)), None, TypeError, "x: expected a floating-point tensor"),
        (torch.tensor(1.0), None, ValueError, "x: expected at least 1 dimension"),
        ([1.0, 2.0], None, TypeError, "x: expected a torch.Tensor"),
    ],
    ids=["bias-length", "bias-2d", "dtype-mismatch", "wrong-device", "int-x", "0d-x", "list-x"],
)
def test_public_op_rejects_bad_input(x, bias, exc, words):
    with pytest.raises(exc, match=words.replace("(", r"\(").replace(")", r"\)")):
        quick_gelu(x, bias)


def test_triton_launchers_reject_bad_input():
    from clipfast.kernels.quick_gelu import quick_gelu_bwd, quick_gelu_fwd

    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="x: expected a 2-D"):
        quick_gelu_fwd(torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="bias: expected shape"):
        quick_gelu_fwd(x, torch.randn(5))
    with pytest.raises(TypeError, match="bias: expected dtype"):
        quick_gelu_fwd(x, torch.randn(8, dtype=torch.float16))
    with pytest.raises(TypeError, match="x: expected float32, float16 or bfloat16"):
        quick_gelu_fwd(x.double())
    with pytest.raises(ValueError, match="grad: expected shape"):
        quick_gelu_bwd(torch.randn(4, 7), torch.randn(4, 7)[:, :6].contiguous())


@needs_ext
def test_extension_rejects_bad_input():
    x = torch.randn(4, 8)
    cases = [
        (lambda: torch.ops.clipfast.quick_gelu_fwd(x, torch.randn(7)), "bias must have shape"),
        (lambda: torch.ops.clipfast.quick_gelu_fwd(x, torch.randn(8, dtype=torch.float16)), "bias must have dtype"),
        (lambda: torch.ops.clipfast.quick_gelu_fwd(x.int(), None), "x must be float32"),
        (lambda: torch.ops.clipfast.quick_gelu_bwd(torch.randn(4, 7), x, None), "grad must have x's shape"),
        (lambda: torch.ops.clipfast.quick_gelu_bwd(x.half(), x, None), "grad must have dtype"),
    ]
    for call, words in cases:
        with pytest.raises(RuntimeError, match=words):
            call()


# --- GPU (skipped here): both fused backends in the dtypes CLIP trains in ----------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", pytest.param("extension", marks=needs_ext)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_matches_reference(backend, dtype):
    x, b, g = _inputs((64, 197, 3072), dtype, device="cuda")
    out = _run_op(x, b, g, backend)
    exact = _reference_grads(x, b, g, torch.float64)
    same = _reference_grads(x, b, g, dtype)
    for name, o, e, s in zip(("y", "grad_x", "grad_bias"), out, exact, same):
        assert_matches_reference(o, s, e, name=name)


@pytest.mark.gpu
@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["vector", "odd_n", "misaligned", "many_rows"])
def test_gpu_cuda_vector_and_scalar_paths(dtype, case):
    """The CUDA kernels' 16-byte vector path (n % (16 / elem) == 0, aligned pointers), their scalar
    fallback (odd n, an input 1 element off 16-byte alignment), more rows than one grid column holds
    (rows loop over blockIdx.y) and a deterministic bias gradient on each."""
    shape = {"vector": (7, 77, 3072), "odd_n": (7, 77, 3071), "misaligned": (9, 3072), "many_rows": (70001, 8)}[case]
    x, b, g = _inputs(shape, dtype, device="cuda")
    if case == "misaligned":  # same values, storage offset 1: contiguous but not 16-byte aligned
        x = torch.empty(x.numel() + 1, dtype=dtype, device="cuda")[1:].view(shape).copy_(x)
        assert x.data_ptr() % 16 != 0
    out = _run_op(x, b, g, "extension")
    exact = _reference_grads(x, b, g, torch.float64)
    same = _reference_grads(x, b, g, dtype)
    for name, o, e, s in zip(("y", "grad_x", "grad_bias"), out, exact, same):
        assert_matches_reference(o, s, e, name=name)
    again = torch.ops.clipfast.quick_gelu_bwd(g.contiguous(), x, b)[1]
    assert torch.equal(torch.ops.clipfast.quick_gelu_bwd(g.contiguous(), x, b)[1], again)
