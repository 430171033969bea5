"""clipfast.optim.Adam/AdamW against torch.optim over 100 steps, per backend; bf16-state drift bound; fp16 state
with gradients of 1e-8; state_dict round trip keeping dtypes; GradScaler skip; LR scheduler; argument errors."""
import io

import pytest
import torch

from clipfast import _extension
from clipfast.optim import Adam, AdamW

HAS_EXT = _extension.load() is not None and hasattr(torch.ops.clipfast, "fused_adam_fwd")
BACKENDS = ["reference", "triton", pytest.param("extension", marks=pytest.mark.skipif(not HAS_EXT, reason="no clipfast._C"))]
SHAPES = [(33, 7), (50,), (1,)]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("CLIPFAST_BACKEND", request.param)
    return request.param


def _train(opt_cls, steps, lr=1e-2, grad_scale=1.0, sched=True, **kw):
    """Parameters after ``steps`` steps on fixed random gradients, two param groups, a LambdaLR schedule."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).requires_grad_() for s in SHAPES]
    opt = opt_cls([{"params": params[:2]}, {"params": params[2:], "lr": lr / 2, "weight_decay": 0.0}], lr=lr,
                  weight_decay=0.1, **kw)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.01 * t)) if sched else None
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * grad_scale
        opt.step()
        if schedule is not None:
            schedule.step()
    return [p.detach() for p in params], opt


@pytest.mark.parametrize("name", ["AdamW", "Adam"])
def test_fp32_state_matches_torch_over_100_steps(backend, name):
    ours, _ = _train({"AdamW": AdamW, "Adam": Adam}[name], 100)
    ref, _ = _train(getattr(torch.optim, name), 100)
    for a, b in zip(ours, ref):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-6


def test_bf16_state_drift_is_bounded(backend):
    """bf16 m, v (stochastically rounded): after 100 steps at lr 1e-2 every parameter is within 1% of the
    largest distance Adam can move it (lr x steps = 1) of torch's fp32 AdamW; measured 0.14% (C++ backend)."""
    ours, opt = _train(AdamW, 100, state_dtype=torch.bfloat16)
    ref, _ = _train(torch.optim.AdamW, 100)
    assert opt.state[opt.param_groups[0]["params"][0]]["exp_avg"].dtype == torch.bfloat16
    for a, b in zip(ours, ref):
        assert (a - b).abs().max().item() <= 0.01 * 1e-2 * 100


def test_fp16_state_keeps_gradients_of_1e_8(backend):
    """g ~ 1e-8: v ~ 1e-16 and m ~ 1e-9 underflow plain fp16 (smallest subnormal 6e-8); with the per-tensor scales
    the steps match torch's fp32 AdamW to 1% of the distance moved."""
    ours, opt = _train(AdamW, 30, grad_scale=1e-8, state_dtype=torch.float16, sched=False)
    ref, _ = _train(torch.optim.AdamW, 30, grad_scale=1e-8, sched=False)
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=g) for s in SHAPES]
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert state["exp_avg_sq"].dtype == torch.float16 and (state["exp_avg_sq"] != 0).float().mean() > 0.99
    for a, b, s in zip(ours, ref, start):
        assert (a - b).abs().max().item() <= 0.01 * (b - s).abs().max().item()


def test_bf16_weights_with_stochastic_rounding_use_6_bytes_per_param():
    params = [torch.randn(s, dtype=torch.bfloat16).requires_grad_() for s in SHAPES]
    opt = AdamW(params, state_dtype="bfloat16", stochastic_rounding=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    n = sum(p.numel() for p in params)
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    weights = sum(p.numel() * p.element_size() for p in params)
    assert state / n == 4 and (state + weights) / n == 6


@pytest.mark.parametrize("kw", [dict(state_dtype="bfloat16", stochastic_rounding=True),
                                dict(state_dtype="float16", master_weights=True)], ids=["bf16-sr", "fp16-master"])
def test_state_dict_round_trip_keeps_dtypes_and_continues_exactly(kw):
    def make():
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=g).to(torch.bfloat16).requires_grad_() for s in SHAPES]
        return params, AdamW(params, lr=1e-2, **kw)

    def steps(params, opt, seed, n=3):
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
            opt.step()

    params, opt = make()
    steps(params, opt, 1)
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    params2, opt2 = make()
    with torch.no_grad():
        for p, q in zip(params2, saved["params"]):
            p.copy_(q)
    opt2.load_state_dict(saved["opt"])
    for p, q in zip(params, params2):
        for k, t in opt.state[p].items():
            assert opt2.state[q][k].dtype == t.dtype and opt2.state[q][k].device == t.device, k
    steps(params, opt, 2)
    steps(params2, opt2, 2)
    for p, q in zip(params, params2):
        assert torch.equal(p, q)


def test_grad_scaler_skips_steps_with_inf_and_unscales(backend):
    def run(opt_cls, poison):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)
        opt = opt_cls(model.parameters(), lr=1e-2)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for step in range(4):
            loss = model(torch.randn(16, 8)).square().mean()
            scaler.scale(loss).backward()
            if poison and step == 1:
                model.weight.grad[0, 0] = float("inf")
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        return model, opt

    ours, opt = run(AdamW, True)
    ref, _ = run(torch.optim.AdamW, True)
    assert opt.state[ours.weight]["step"].item() == 3  # the poisoned step was skipped
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_arguments_are_checked():
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match="amsgrad"):
        AdamW(p, amsgrad=True)
    with pytest.raises(ValueError, match="state_dtype"):
        AdamW(p, state_dtype=torch.float64)
    with pytest.raises(ValueError, match="betas"):
        AdamW(p, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        AdamW([torch.zeros(3, dtype=torch.float64, requires_grad=True)])


@pytest.mark.parametrize("source, target", [("torch", "float32"), ("torch", "bfloat16"), ("torch", "float16"),
                                            ("float16", "bfloat16"), ("bfloat16", "float16")])
def test_load_state_dict_converts_saved_state_to_the_optimizers_options(source, target):
    """A state saved by torch.optim.AdamW (fp32 m, v, none of our options) or with another state dtype loads into
    the optimizer's own state dtype (fp16: scales from the moments' maxima); 20 more steps stay within the
    bf16-state drift bound of the saved optimizer's own continuation (torch's fp32 into fp32: 1e-6 relative)."""
    def make(cls, **kw):
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=g).requires_grad_() for s in SHAPES]
        return params, cls(params, lr=1e-2, weight_decay=0.1, **kw)

    def steps(params, opt, seed, n):
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()

    params, opt = make(torch.optim.AdamW) if source == "torch" else make(AdamW, state_dtype=source)
    steps(params, opt, 1, 10)
    ours, opt_ours = make(AdamW, state_dtype=target)
    with torch.no_grad():
        for a, b in zip(ours, params):
            a.copy_(b)
    opt_ours.load_state_dict(opt.state_dict())
    state = opt_ours.state[ours[0]]
    assert state["exp_avg"].dtype == getattr(torch, target) and state["step"].item() == 10
    assert ("fp16_scale" in state) == (target == "float16") and opt_ours.param_groups[0]["state_dtype"] == target
    steps(params, opt, 2, 20)
    steps(ours, opt_ours, 2, 20)
    for a, b in zip(ours, params):
        bound = 1e-6 * b.abs().max().item() if target == "float32" else 0.01 * 1e-2 * 20
        assert (a - b).abs().max().item() <= bound
