"""The trainer's optimizer: ``torch.optim.AdamW`` (``--optimizer adamw``, OpenCLIP's) or ``clipfast.optim.AdamW``
(``--optimizer clipfast-adamw``: one fused pass, bf16/fp16 statistics, stochastically rounded bf16 weights).

Flags (``clipfast.train.cli``; ``TrainConfig`` fields) and what they resolve to (:func:`resolve_optimizer_args`):

- ``--opt-state-dtype {float32,bfloat16,float16}``: dtype of m and v (clipfast-adamw only).
- ``--opt-stochastic-rounding`` / ``--no-opt-stochastic-rounding``: round bf16 weights stochastically after
  each update (default on with clipfast-adamw; a no-op for fp32 weights or with master weights).
- ``--opt-master-weights``: fp32 master copies of fp16/bf16 weights in the optimizer state.
- ``--bf16-weights``: bf16 parameters updated with stochastic rounding: ``--precision pure_bf16`` (unless
  ``bf16`` or ``pure_bf16`` is given), ``--optimizer clipfast-adamw`` and, unless given, ``--opt-state-dtype
  bfloat16`` — 2 B of weights + 4 B of state per parameter.

The stochastic-rounding seed is ``--seed`` (the same on every rank, so data-parallel replicas stay identical).
"""
import torch

from clipfast.optim import STATE_DTYPES, AdamW
from clipfast.train.params import param_groups

__all__ = ["OPTIMIZERS", "OPT_STATE_DTYPES", "resolve_optimizer_args", "build_optimizer"]

OPTIMIZERS = ("adamw", "clipfast-adamw")
OPT_STATE_DTYPES = tuple(STATE_DTYPES)  # float32, bfloat16, float16
_BF16_PRECISIONS = ("bf16", "pure_bf16")


def resolve_optimizer_args(cfg) -> None:
    """Fill in the optimizer settings' defaults on ``cfg`` (a ``TrainConfig``, whose construction calls this)
    and check them; idempotent. ``bf16_weights`` sets the precision (before the model is built).

    Raises:
        ValueError: naming the flag, for an unknown optimizer or state dtype, clipfast-only flags with
            ``--optimizer adamw``, or ``--bf16-weights`` with a precision that is not bf16.
    """
    name = cfg.optimizer or ("clipfast-adamw" if cfg.bf16_weights else "adamw")
    if name not in OPTIMIZERS:
        raise ValueError(f"--optimizer: expected one of {OPTIMIZERS}, got {name!r}")
    state, sr = cfg.opt_state_dtype, cfg.opt_stochastic_rounding
    if state is not None and state not in OPT_STATE_DTYPES:
        raise ValueError(f"--opt-state-dtype: expected one of {OPT_STATE_DTYPES}, got {state!r}")
    if name == "adamw":
        given = [flag for flag, on in (("--bf16-weights", cfg.bf16_weights), ("--opt-master-weights", cfg.opt_master_weights),
                                       ("--opt-stochastic-rounding", bool(sr)),
                                       ("--opt-state-dtype", state not in (None, "float32"))) if on]
        if given:
            raise ValueError(f"{given[0]}: needs --optimizer clipfast-adamw (torch.optim.AdamW keeps fp32 state "
                             "and rounds bf16 weights to nearest)")
    if cfg.bf16_weights:
        if cfg.precision in ("auto", "fp32"):
            cfg.precision = "pure_bf16"
        elif cfg.precision not in _BF16_PRECISIONS:
            raise ValueError(f"--bf16-weights: needs --precision bf16 or pure_bf16 (or none), got {cfg.precision!r}")
    cfg.optimizer = name
    cfg.opt_state_dtype = state or ("bfloat16" if cfg.bf16_weights else "float32")
    cfg.opt_stochastic_rounding = (name == "clipfast-adamw") if sr is None else bool(sr)


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` (a resolved ``TrainConfig``) over ``model``'s two weight-decay groups
    (``clipfast.train.params``), with ``lr``, ``beta1/2``, ``eps``, ``wd``."""
    groups = param_groups(model, cfg.wd, cfg.wd_exclude_embeddings)
    hyper = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, **hyper)
    return AdamW(groups, state_dtype=cfg.opt_state_dtype, stochastic_rounding=cfg.opt_stochastic_rounding,
                 master_weights=cfg.opt_master_weights, seed=cfg.seed, **hyper)
