"""``Adam`` and ``AdamW`` with half-precision statistics and stochastically rounded bf16 weights, one fused pass.

A ``torch.optim.Optimizer`` (param groups, LR schedulers, ``state_dict``/``load_state_dict``, ``GradScaler``,
``clip_grad_norm_``): each step runs ``clipfast.ops.fused_adam`` once per (group, device, dtypes) bucket of
parameters — the multi-tensor CUDA kernel, the Triton kernel or the C++ CPU kernel (see ``clipfast.backend``),
each reading and writing every element once.

Options (per group; the constructor's are the defaults):

- ``state_dtype``: ``torch.float32`` (default), ``torch.bfloat16`` or ``torch.float16`` for m and v.
  bf16: stored with stochastic rounding (unbiased; round-to-nearest would freeze v at beta2 close to 1), 4 B
  of state per parameter. fp16: m and sqrt(v) stored with per-tensor power-of-two scales, 4 B per parameter.
  The scales come from bounds that hold by construction: with ``G = max|g|`` of this step,
  ``B_m <- beta1 B_m + (1 - beta1) G`` bounds ``|m|`` and ``B_w <- sqrt(beta2 B_w^2 + (1 - beta2) G^2)`` bounds
  ``sqrt(v)``; the scale maps the bound to 2^15 (fp16 max 65504), so nothing overflows and a tensor whose
  gradients are 1e-8 (v = 1e-16, below fp16's 6e-8) keeps full fp16 precision. Cost: one extra read of the
  gradients (``_foreach_norm(inf)``) and one host sync per step, fp16 state only (under FSDP2 also an
  all-reduce of the per-tensor maxima, so every shard of a tensor has the same scales).
- ``stochastic_rounding``: round bf16 parameters stochastically after the update (no master copy): with bf16
  weights + bf16 state that is 6 B per parameter (weights 2 + m 2 + v 2), against 16 for fp32 weights, m, v and
  grads. Random bits are a hash of (``seed``, step, tensor index, element index): reproducible, and identical
  on every data-parallel rank, so DDP replicas stay bit-identical.
- ``master_weights``: keep an fp32 copy of every fp16/bf16 parameter (``state["master"]``), update it, and
  round the parameter to nearest from it. The parameter is then a rounded copy of the master, rewritten every
  step: changes made to it outside the optimizer are overwritten at the next step.

Data parallel: under DDP every rank takes the same step. Parameters may be FSDP2 DTensors: the local shards
are updated, each element drawing the random bits of its position in the full tensor, so sharded training
takes the single-process steps bit for bit (tests/test_optim_distributed.py).

Limits: ``amsgrad=False`` only; no sparse gradients, ``maximize``, ``capturable`` or ``differentiable``;
complex parameters are not supported.
"""
import math

import torch

from clipfast.ops.fused_adam import fused_adam, sr_key

__all__ = ["Adam", "AdamW", "STATE_DTYPES", "PER_TENSOR_STATE"]

STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
FP16_TARGET = 2.0**15  # the fp16 value a state bound maps to
PER_TENSOR_STATE = ("step", "fp16_scale")  # state entries not shaped like the parameter
_OPTIONS = ("state_dtype", "stochastic_rounding", "master_weights", "seed")  # kept by load_state_dict


def _dtype_name(value, arg="state_dtype"):
    if isinstance(value, torch.dtype):
        value = str(value).removeprefix("torch.")
    name = _ALIASES.get(str(value), str(value))
    if name not in STATE_DTYPES:
        raise ValueError(f"{arg}: expected one of torch.float32, torch.bfloat16, torch.float16, got {value!r}")
    return name


def _local(t):
    """The local tensor of a DTensor (FSDP2 shards), else ``t``."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t


def _shard_offset(p):
    """Flat index, in the full tensor, of the first element of ``p``'s local shard (0 for plain tensors).

    Added to the random-stream key, it gives every element of an FSDP2 (``Shard(0)``) shard the random bits
    of its position in the full tensor: the step is then the single-process one, bit for bit. (Other
    placements get the offset of their first element: still unbiased, not single-process identical.)"""
    if not hasattr(p, "_local_tensor"):
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    strides = [math.prod(p.shape[d + 1:]) for d in range(len(p.shape))]
    return sum(o * st for o, st in zip(offset, strides))


def _abs_maxima(tensors):
    """max |t| of each tensor as one 1-D fp32 tensor on their device (0 for empty ones, e.g. FSDP2 shards)."""
    out = torch.zeros(len(tensors), dtype=torch.float32, device=tensors[0].device)
    full = [i for i, t in enumerate(tensors) if t.numel()]
    if full:
        out[full] = torch.stack(torch._foreach_norm([tensors[i] for i in full], math.inf)).float()
    return out


def _global_max(values, like):
    """``values`` (a 1-D tensor of per-tensor local maxima) maxed over the ranks holding shards of ``like``
    (a DTensor), so every rank derives the same fp16 scales; unchanged for plain tensors."""
    if hasattr(like, "device_mesh"):
        import torch.distributed as dist

        values = values.clone()
        for dim in range(like.device_mesh.ndim):
            dist.all_reduce(values, op=dist.ReduceOp.MAX, group=like.device_mesh.get_group(dim))
    return values


def _pow2_scale(bound):
    """2^k with bound * 2^k <= FP16_TARGET (1 for a zero or non-finite bound)."""
    if not math.isfinite(bound) or bound <= 0.0:
        return 1.0
    return 2.0 ** max(-120, min(120, math.floor(math.log2(FP16_TARGET / bound))))


class Adam(torch.optim.Optimizer):
    """Adam with L2 weight decay added to the gradient (``torch.optim.Adam``'s rule); see the module docstring.

    Args:
        params: parameters or param groups.
        lr, betas, eps, weight_decay: as ``torch.optim.Adam``.
        amsgrad: must be False.
        state_dtype: dtype of m and v: torch.float32, torch.bfloat16 or torch.float16 (or their names).
        stochastic_rounding: round bf16 parameters stochastically (ignored with master weights).
        master_weights: keep fp32 master copies of fp16/bf16 parameters.
        seed: seed of the stochastic-rounding random stream.
    """

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 state_dtype=torch.float32, stochastic_rounding=False, master_weights=False, seed=0):
        if amsgrad:
            raise ValueError(f"amsgrad: {type(self).__name__} supports amsgrad=False only, got {amsgrad!r}")
        if isinstance(lr, torch.Tensor) or not lr >= 0.0:
            raise ValueError(f"lr: expected a float >= 0, got {lr!r}")
        if not eps >= 0.0:
            raise ValueError(f"eps: expected >= 0, got {eps!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas: expected two values in [0, 1), got {betas!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=False,
                        state_dtype=_dtype_name(state_dtype), stochastic_rounding=bool(stochastic_rounding),
                        master_weights=bool(master_weights), seed=int(seed))
        super().__init__(params, defaults)
        for group in self.param_groups:
            group["state_dtype"] = _dtype_name(group["state_dtype"])
            if group.get("amsgrad"):
                raise ValueError(f"amsgrad: {type(self).__name__} supports amsgrad=False only (param group)")
            for p in group["params"]:
                if p.is_complex() or p.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                    raise TypeError(f"params: expected float32, float16 or bfloat16 parameters, got {p.dtype}")

    def _init_state(self, p, group):
        state = self.state[p]
        sdt = STATE_DTYPES[group["state_dtype"]]
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(p, dtype=sdt, memory_format=torch.contiguous_format)
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=sdt, memory_format=torch.contiguous_format)
        if sdt == torch.float16:
            state["fp16_scale"] = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)  # B_m, B_w, m_enc, w_enc
        if group["master_weights"] and p.dtype != torch.float32:
            state["master"] = p.detach().float().clone(memory_format=torch.contiguous_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step (``closure`` re-evaluates the loss, as in torch optimizers)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            buckets = {}
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p] if self.state[p] else self._init_state(p, group)
                state["step"] += 1
                master = state.get("master")
                key = (p.device, p.dtype, state["exp_avg"].dtype, master is not None)
                buckets.setdefault(key, []).append((p, state, index - 1))
            for (_device, _pdt, sdt, has_master), items in buckets.items():
                self._step_bucket(group, items, sdt, has_master)
        return loss

    def _step_bucket(self, group, items, sdt, has_master):
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        params = [_local(p) for p, _, _ in items]
        grads = [_local(p.grad) for p, _, _ in items]
        exp_avgs = [_local(s["exp_avg"]) for _, s, _ in items]
        exp_avg_sqs = [_local(s["exp_avg_sq"]) for _, s, _ in items]
        masters = [_local(s["master"]) for _, s, _ in items] if has_master else []
        if sdt == torch.float16:
            scales = self._fp16_scales(items, grads, params, masters, beta1, beta2, wd)
        rows = []
        for i, (_, state, idx) in enumerate(items):
            t = int(state["step"].item())
            key = (sr_key(group["seed"], t, idx) + _shard_offset(items[i][0])) & 0xFFFFFFFF
            row = [lr / (1.0 - beta1**t), math.sqrt(1.0 - beta2**t), float(key)]
            rows.append(row + (scales[i] if sdt == torch.float16 else [1.0, 1.0, 1.0, 1.0]))
        args = torch.tensor(rows, dtype=torch.float64)
        fused_adam(params, grads, exp_avgs, exp_avg_sqs, masters, args, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                   weight_decay=wd, decoupled=self.decoupled, stochastic_rounding=group["stochastic_rounding"])

    def _fp16_scales(self, items, grads, params, masters, beta1, beta2, wd):
        """Per tensor [m_decode, m_encode, v_decode, v_encode] from the bounds (see the module docstring)."""
        like = items[0][0]
        g_max = _global_max(_abs_maxima(grads), like).double().cpu()
        if not self.decoupled and wd != 0:  # Adam's gradient includes wd * x
            x_max = _global_max(_abs_maxima(masters or params), like)
            g_max = g_max + wd * x_max.double().cpu()
        out = []
        for (_, state, _), g in zip(items, g_max.tolist()):
            b_m, b_w, m_enc, w_enc = state["fp16_scale"].tolist()
            b_m = beta1 * b_m + (1.0 - beta1) * g
            b_w = math.sqrt(beta2 * b_w * b_w + (1.0 - beta2) * g * g)
            new_m, new_w = _pow2_scale(b_m), _pow2_scale(b_w)
            state["fp16_scale"] = torch.tensor([b_m, b_w, new_m, new_w], dtype=torch.float64)
            out.append([1.0 / m_enc, new_m, 1.0 / w_enc, new_w])
        return out

    def load_state_dict(self, state_dict):
        """``torch.optim.Optimizer.load_state_dict`` (hyper-parameters come from ``state_dict``), except that

        - each state tensor keeps its saved dtype (torch casts floating state to the parameter's dtype: bf16
          m, v would come back fp32 and fp32 masters bf16), ``step`` and ``fp16_scale`` stay on the CPU;
        - this optimizer's storage options (``state_dtype``, ``stochastic_rounding``, ``master_weights``,
          ``seed``) are kept, and saved state that differs is converted to them: m, v decoded to fp32 and
          re-encoded (fp16: scales from their maxima), masters made from the parameters or dropped. So a
          checkpoint of ``torch.optim.AdamW`` (fp32 m, v, no options) loads, and a clipfast checkpoint
          loaded into an optimizer with the same options continues bit for bit.
        """
        saved = {k: dict(v) for k, v in state_dict["state"].items()}
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        options = [{k: g[k] for k in _OPTIONS} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, opts in zip(self.param_groups, options):
            group.update(opts)
        owner = {p: g for g in self.param_groups for p in g["params"]}
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            if pid not in saved or p not in self.state:
                continue
            state = self.state[p]
            for name, value in saved[pid].items():
                if not isinstance(value, torch.Tensor):
                    continue
                if name in PER_TENSOR_STATE:
                    state[name] = value.detach().to("cpu", copy=True)
                else:
                    state[name] = self._like_param(value, p)
            self._convert_state(p, state, owner[p])

    @staticmethod
    def _convert_state(p, state, group):
        """Re-encode ``state`` (of parameter ``p``) for ``group``'s state dtype and master-weight option."""
        sdt = STATE_DTYPES[group["state_dtype"]]
        m, v = state.get("exp_avg"), state.get("exp_avg_sq")
        if m is not None and v is not None and (m.dtype != sdt or (sdt == torch.float16) != ("fp16_scale" in state)):
            m, v = m.float(), v.float()
            if "fp16_scale" in state:  # stored m * m_enc and sqrt(v) * w_enc
                _, _, m_enc, w_enc = state.pop("fp16_scale").tolist()
                m, v = m / m_enc, (v / w_enc) ** 2
            if sdt == torch.float16:
                b_m, b_w = _global_max(_abs_maxima([_local(m), _local(v).sqrt()]), m).double().tolist()
                m_enc, w_enc = _pow2_scale(b_m), _pow2_scale(b_w)
                state["fp16_scale"] = torch.tensor([b_m, b_w, m_enc, w_enc], dtype=torch.float64)
                m, v = m * m_enc, v.sqrt() * w_enc
            state["exp_avg"], state["exp_avg_sq"] = m.to(sdt), v.to(sdt)
        if group["master_weights"] and p.dtype != torch.float32:
            if "master" not in state:
                state["master"] = p.detach().float().clone(memory_format=torch.contiguous_format)
        else:
            state.pop("master", None)

    @staticmethod
    def _like_param(value, p):
        """``value`` (its dtype kept) on ``p``'s device, as a DTensor with ``p``'s placements if ``p`` is one."""
        if hasattr(p, "_local_tensor") and not hasattr(value, "_local_tensor"):
            from torch.distributed.tensor import distribute_tensor

            return distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
        return value.to(device=p.device, copy=True)


class AdamW(Adam):
    """AdamW: decoupled weight decay ``x <- x (1 - lr wd)`` (``torch.optim.AdamW``'s rule, default wd 1e-2);
    arguments as :class:`Adam`."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, **kwargs):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, **kwargs)
