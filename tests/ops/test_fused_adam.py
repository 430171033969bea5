"""fused_adam: the C++ CPU kernel (clipfast._C) and the Triton kernel (interpreter) against the _foreach reference
for every (param dtype, state dtype, master, stochastic rounding, Adam/AdamW) combination, odd sizes and several
CPU chunks; the reference against torch.optim.AdamW's arithmetic; stochastic rounding unbiased and reproducible;
fp16/bf16 conversions bit-exact; NaN propagation; bad inputs; GPU checks (marked gpu)."""
import copy
import importlib

import pytest
import torch

from clipfast import _extension
from clipfast.ops.fused_adam import _fused_adam_op, bf16_round, fused_adam, fused_adam_ref, sr_key
from tests.numerics import assert_close

ops = importlib.import_module("clipfast.ops.fused_adam")  # the module (clipfast.ops.fused_adam is the function)

HAS_EXT = _extension.load() is not None and hasattr(torch.ops.clipfast, "fused_adam_fwd")
needs_ext = pytest.mark.skipif(not HAS_EXT, reason=f"clipfast._C without fused_adam: {_extension.load_error()}")
BACKENDS = ["triton", pytest.param("extension", marks=needs_ext)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HYPER = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
# (numel of each tensor): 1 element, odd, and (on the C++ path) several 16384-element chunks.
SIZES = (1, 37, 1000, 40000)


def _problem(pdt, sdt, master, sizes=SIZES, device="cpu", step=3):
    """(params, grads, exp_avgs, exp_avg_sqs, masters, args) after a few steps' worth of state."""
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(n, generator=g).to(device, pdt) for n in sizes]
    grads = [torch.randn(n, generator=g).to(device, pdt) for n in sizes]
    m = [(0.1 * torch.randn(n, generator=g)).to(device, sdt) for n in sizes]
    v = [(0.01 * torch.rand(n, generator=g)).to(device, sdt) for n in sizes]
    masters = [p.float() + 1e-4 * torch.randn(p.shape, generator=g).to(device) for p in params] if master else []
    b1, b2 = HYPER["beta1"], HYPER["beta2"]
    scale = [0.5, 2.0, 0.25, 4.0] if sdt == torch.float16 else [1.0, 1.0, 1.0, 1.0]
    if sdt == torch.float16:
        m = [(x.float() * 2.0).to(sdt) for x in m]  # stored = value * encode of the previous step (2)
        v = [(x.float().sqrt() * 4.0).to(sdt) for x in v]  # fp16 state holds sqrt(v) * scale
    args = torch.tensor([[HYPER["lr"] / (1 - b1**step), (1 - b2**step) ** 0.5, sr_key(7, step, i), *scale]
                         for i in range(len(sizes))], dtype=torch.float64)
    return params, grads, m, v, masters, args


def _combos():
    for pdt in DTYPES:
        for sdt in DTYPES:
            for master in ([False] if pdt == torch.float32 else [False, True]):
                for sr in ([False, True] if pdt == torch.bfloat16 and not master else [False]):
                    yield pytest.param(pdt, sdt, master, sr,
                                       id=f"p{str(pdt)[6:]}-s{str(sdt)[6:]}-master{int(master)}-sr{int(sr)}")


def _assert_same(out, ref):
    """Kernel vs reference: the dtype's table tolerance, and at most 1% of stored elements one rounding apart
    (an fp32 ulp from a different FMA contraction can move a bf16/fp16 rounding decision)."""
    for name, lo, lr in zip(("params", "grads", "exp_avgs", "exp_avg_sqs", "masters"), out[:5], ref[:5]):
        differ = total = 0
        for i, (o, r) in enumerate(zip(lo, lr)):
            assert o.dtype == r.dtype, f"{name}[{i}] dtype"
            assert_close(o, r, name=f"{name}[{i}]")
            if o.dtype != torch.float32:
                differ += int(((o != r) & ~(torch.isnan(o) & torch.isnan(r))).sum())
                total += o.numel()
        assert differ <= max(1, total // 100), f"{name}: {differ} of {total} stored 16-bit values differ"


def _assert_bits_equal(a, b):
    """Same 16-bit patterns, except that any NaN equals any NaN (payloads differ between converters) and the
    interpreter may lose the sign of a zero."""
    nan = torch.isnan(a)
    assert torch.equal(nan, torch.isnan(b))
    bad = (a.view(torch.int16) != b.view(torch.int16)) & ~nan & ~((a == 0) & (b == 0))
    assert not bad.any(), f"{int(bad.sum())} differ, e.g. {a[bad][:4].tolist()} vs {b[bad][:4].tolist()}"


def _run(backend, problem, decoupled=True, sr=False):
    data = copy.deepcopy(problem)
    _fused_adam_op(*[list(x) for x in data[:5]], data[5], *HYPER.values(), decoupled, sr, backend)
    return data


# --- kernels against the reference ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("decoupled", [True, False], ids=["adamw", "adam"])
@pytest.mark.parametrize("pdt,sdt,master,sr", list(_combos()))
def test_kernel_matches_reference(backend, decoupled, pdt, sdt, master, sr):
    sizes = SIZES if backend == "extension" else SIZES[:3]  # keep the interpreter quick
    problem = _problem(pdt, sdt, master, sizes)
    _assert_same(_run(backend, problem, decoupled, sr), _run("reference", problem, decoupled, sr))


@pytest.mark.parametrize("decoupled", [True, False], ids=["adamw", "adam"])
def test_reference_is_torch_adam_arithmetic(decoupled):
    """fp32 params and state: one reference step equals one torch.optim.AdamW/Adam step to fp32 rounding."""
    params, grads, m, v, _, args = _problem(torch.float32, torch.float32, False, sizes=(1000, 37))
    step = 3
    tparams = [p.clone().requires_grad_() for p in params]
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls(tparams, **{"lr": HYPER["lr"], "betas": (HYPER["beta1"], HYPER["beta2"]), "eps": HYPER["eps"],
                          "weight_decay": HYPER["weight_decay"]}, foreach=False)
    for p, g, mi, vi in zip(tparams, grads, m, v):
        p.grad = g.clone()
        opt.state[p] = {"step": torch.tensor(float(step - 1)), "exp_avg": mi.clone(), "exp_avg_sq": vi.clone()}
    opt.step()
    args[:, 0] = HYPER["lr"] / (1 - HYPER["beta1"] ** step)
    fused_adam_ref(params, grads, m, v, [], args, *HYPER.values(), decoupled, False)
    for p, t in zip(params, tparams):
        torch.testing.assert_close(p, t.detach(), rtol=1e-6, atol=1e-7)
    for mi, vi, t in zip(m, v, tparams):
        torch.testing.assert_close(mi, opt.state[t]["exp_avg"], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(vi, opt.state[t]["exp_avg_sq"], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_nan_and_inf_gradients_propagate(backend):
    params, grads, m, v, _, args = _problem(torch.float32, torch.bfloat16, False, sizes=(64,))
    grads[0][3], grads[0][10] = float("nan"), float("inf")
    out = _run(backend, (params, grads, m, v, [], args))
    assert torch.isnan(out[0][0][[3, 10]]).all() and torch.isfinite(out[0][0][:3]).all()
    assert torch.isnan(out[2][0][3]) and torch.isnan(out[3][0][3])


# --- stochastic rounding -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_stochastic_rounding_is_unbiased(backend):
    """N = 100k bf16 copies of one value take the same fp32 update x; the mean of their stochastic roundings is x
    within 4 standard errors (ulp / (2 sqrt N)) plus the 16-bit discretisation (ulp / 2^16); round-to-nearest
    instead leaves every copy where it was (the update is below half an ulp): the stall SR avoids."""
    n = 100_000
    p0 = torch.full((n,), 1.0, dtype=torch.bfloat16)  # update lr = 1e-3 < half an ulp below 1 (2^-9)
    g = torch.full((n,), 0.5, dtype=torch.bfloat16)
    args = torch.tensor([[1e-3 / 0.1, 0.001**0.5, sr_key(0, 1, 0), 1, 1, 1, 1]], dtype=torch.float64)
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)

    def step(p, sr, sdt=torch.float32, g=g):
        p = p.clone()
        z = torch.zeros(n, dtype=sdt)
        _fused_adam_op([p], [g.clone()], [z], [z.clone()], [], args, *hyper.values(), True, sr, backend)
        return p

    g32 = g.float()
    x = step(p0.float(), False, g=g32)[0].item()  # the fp32 value each copy is rounded from
    ulp = 2.0**-8  # x = 0.999, in [0.5, 1)
    for sdt in (torch.float32, torch.bfloat16):
        mean = step(p0, True, sdt).double().mean().item()
        assert abs(mean - x) <= 4 * ulp / (2 * n**0.5) + ulp / 2**16, (mean, x)
    assert torch.equal(step(p0, False), p0)


def test_bf16_round_matches_torch_and_is_unbiased():
    x = torch.randn(50_000) * 10.0 ** torch.randint(-30, 30, (50_000,)).float()
    x = torch.cat([x, torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 3.3895e38])])
    _assert_bits_equal(bf16_round(x), x.to(torch.bfloat16))
    one = torch.full((200_000,), 1.0 + 2**-9)  # a quarter ulp above 1
    r = ops._random_bits(one.numel(), 12345, "cpu")
    assert abs(bf16_round(one, r).double().mean().item() - (1.0 + 2**-9)) < 4 * 2**-7 / (2 * 200_000**0.5)


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_stochastic_rounding_is_reproducible_from_seed_and_step(backend):
    problem = _problem(torch.bfloat16, torch.bfloat16, False, sizes=(37, 1000))
    a, b = _run(backend, problem, sr=True), _run(backend, problem, sr=True)
    for x, y in zip(a[0] + a[2] + a[3], b[0] + b[2] + b[3]):
        assert torch.equal(x.view(torch.int16), y.view(torch.int16))
    other = copy.deepcopy(problem)
    other[5][:, 2] = torch.tensor([float(sr_key(8, 3, i)) for i in range(2)], dtype=torch.float64)  # another seed
    c = _run(backend, other, sr=True)
    assert not torch.equal(a[0][1], c[0][1])


def test_sr_keys_differ_per_seed_step_and_tensor():
    keys = {sr_key(s, t, i) for s in range(3) for t in range(1, 50) for i in range(20)}
    assert len(keys) == 3 * 49 * 20 and all(0 <= k < 2**32 for k in keys)


# --- conversions, bad inputs, dispatch -----------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
@pytest.mark.parametrize("pdt", [torch.float16, torch.bfloat16])
def test_master_rounds_to_nearest_bit_exactly(backend, pdt):
    """lr = 0: the param becomes round-to-nearest(master) exactly, over fp16's subnormal, normal and overflow
    ranges (the C++ host conversions are branch-free bit code; they must equal torch's casts)."""
    w = torch.randn(20_000) * 10.0 ** torch.randint(-10, 6, (20_000,)).float()
    w = torch.cat([w, torch.tensor([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e6, 6e-8, 2.9e-8, 3.1e-8, 1e-10,
                                    float("nan"), 2.0**-14, 2.0**-14 - 2.0**-25])])
    p = torch.zeros_like(w, dtype=pdt)
    z = torch.zeros_like(w)
    args = torch.tensor([[0.0, 1.0, 0, 1, 1, 1, 1]], dtype=torch.float64)
    _fused_adam_op([p], [torch.zeros_like(p)], [z], [z.clone()], [w.clone()], args, 0.0, 0.9, 0.999, 1e-8, 0.0,
                   True, False, backend)
    _assert_bits_equal(p, w.to(pdt))


def test_public_op_checks_arguments():
    params, grads, m, v, _, args = _problem(torch.float32, torch.float32, False, sizes=(4, 5))
    with pytest.raises(ValueError, match="grads: expected 2 tensors"):
        fused_adam(params, grads[:1], m, v, [], args, **HYPER)
    with pytest.raises(ValueError, match=r"args: expected a \(2, 7\) float64"):
        fused_adam(params, grads, m, v, [], args[:1], **HYPER)
    with pytest.raises(TypeError, match="params\\[1\\]/grads\\[1\\]"):
        fused_adam(params, [grads[0], grads[1].half()], m, v, [], args, **HYPER)
    with pytest.raises(TypeError, match="masters"):
        fused_adam(params, grads, m, v, [p.clone() for p in params], args, **HYPER)


@needs_ext
def test_extension_checks_name_the_argument():
    params, grads, m, v, _, args = _problem(torch.float32, torch.float32, False, sizes=(4, 5))
    op = torch.ops.clipfast.fused_adam_fwd
    hyper = (*HYPER.values(), True, False)
    with pytest.raises(RuntimeError, match=r"grads\[1\] must have the shape"):
        op(params, [grads[0], grads[1][:2]], m, v, [], args, *hyper)
    with pytest.raises(RuntimeError, match=r"exp_avg_sqs\[0\] must have dtype"):
        op(params, grads, m, [v[0].half(), v[1]], [], args, *hyper)
    with pytest.raises(RuntimeError, match=r"params\[0\] must be contiguous"):
        op([torch.zeros(5, 2).t()], [torch.zeros(2, 5)], [torch.zeros(2, 5)], [torch.zeros(2, 5)], [], args[:1], *hyper)
    with pytest.raises(RuntimeError, match="args must be a contiguous"):
        op(params, grads, m, v, [], args.float(), *hyper)


def test_non_contiguous_falls_back_to_reference(monkeypatch):
    base = torch.randn(8, 6)
    p = base.t()  # (6, 8), not contiguous
    g, m, v = torch.randn(6, 8), torch.zeros(6, 8), torch.zeros(6, 8)
    args = torch.tensor([[0.1, 0.1, 0, 1, 1, 1, 1]], dtype=torch.float64)
    expected = p.clone()
    fused_adam_ref([expected], [g], [m.clone()], [v.clone()], [], args, *HYPER.values(), True, False)
    fused_adam([p], [g], [m], [v], [], args, **HYPER)
    torch.testing.assert_close(p, expected)
    assert torch.equal(base.t(), p)  # updated in place through the view


def test_backend_entry():
    from clipfast import backend

    assert backend.OP_BACKENDS["fused_adam"] == ("triton", "extension")
    expected = "triton" if backend.interpreter_on() else ("extension" if HAS_EXT else "reference")
    assert backend.select("fused_adam", torch.device("cpu")) == expected


# --- GPU -----------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", pytest.param("extension", marks=needs_ext)])
@pytest.mark.parametrize("pdt,sdt,master,sr", list(_combos()))
def test_gpu_matches_reference(backend, pdt, sdt, master, sr):
    # 30 tensors, two over a 65536-element chunk: the multi-tensor launcher fills and splits its tables.
    sizes = (1, 37, 70_000, 300_001) + (513,) * 26
    problem = _problem(pdt, sdt, master, sizes, device="cuda")
    _assert_same(_run(backend, problem, True, sr), _run("reference", problem, True, sr))
