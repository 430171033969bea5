"""Training checkpoints across clipfast and OpenCLIP's ``open_clip_train``, both directions.

OpenCLIP writes ``{"epoch": completed epochs, "name", "state_dict", "optimizer"[, "scaler"]}`` after each epoch;
its optimizer state is indexed by position in ``[no-decay group, decay group]``, each in ``named_parameters()``
order (``clipfast.CLIP`` registers parameters in the same order, and ``clipfast.train.params`` builds the same
two groups). clipfast writes the same keys plus ``step``, ``batch_in_epoch``, ``args``, ``rng``, ``metrics``, and
its groups carry the parameter ``names``.

What each side restores:

- clipfast resuming OpenCLIP (``to_clipfast_state``): model, AdamW state (moments and per-parameter step, so
  the update continues exactly), GradScaler state, epoch; ``step = epoch * steps_per_epoch`` (the schedule
  position), ``batch_in_epoch = 0``; RNG states are not in the file (the run continues with fresh ones).
- OpenCLIP resuming clipfast (``to_open_clip_checkpoint``, or the clipfast file as is when it was saved without
  FSDP and with a scaler iff OpenCLIP uses one): model, optimizer, scaler, epoch. OpenCLIP resumes at the start
  of ``epoch``: from a mid-epoch ``latest.pt`` (``batch_in_epoch > 0``) it replays that epoch's first batches;
  ``step``, RNG and metrics are ignored.

Optimizer state is checked before it is used: every moment must have its parameter's shape (``step`` and
``clipfast.optim``'s ``fp16_scale`` are per tensor), and clipfast
checkpoints with names (including ones saved before the parameter order matched OpenCLIP's) are re-indexed by
name, so a state never lands on the wrong parameter.
"""
import copy

import torch

from clipfast.optim import PER_TENSOR_STATE  # clipfast.optim's per-tensor entries (fp16 scales) are not moments
from clipfast.train.distributed import is_sharded

__all__ = ["is_open_clip_checkpoint", "align_optimizer_state", "to_clipfast_state", "to_open_clip_checkpoint"]


def is_open_clip_checkpoint(state) -> bool:
    """True for an ``open_clip_train`` checkpoint (an ``epoch`` and a ``state_dict``, no clipfast ``step``)."""
    return isinstance(state, dict) and "state_dict" in state and "epoch" in state and "step" not in state


def _strip_module(sd):
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def align_optimizer_state(optim_sd: dict, group_names: list, param_shapes: dict) -> dict:
    """``optim_sd`` re-indexed for an optimizer whose groups hold the parameters ``group_names[g]`` (in order).

    Args:
        optim_sd: a ``torch.optim`` state dict: int-indexed (OpenCLIP / plain PyTorch; groups may carry ``names``)
            or name-keyed (``torch.distributed.checkpoint`` full state dicts, as clipfast saves under FSDP).
        group_names: per current group, its parameter names in order.
        param_shapes: name -> parameter shape.

    Returns:
        An int-indexed state dict whose group ``g`` lists ``group_names[g]`` (also as ``names``), loadable with
        ``optimizer.load_state_dict``.

    Raises:
        ValueError: naming the group or parameter when the groups differ or a moment has the wrong shape.
    """
    groups = optim_sd["param_groups"]
    if len(groups) != len(group_names):
        raise ValueError(f"optimizer state: {len(groups)} parameter groups saved, the optimizer has {len(group_names)}")
    state = optim_sd.get("state", {})
    new_state, new_groups, next_id = {}, [], 0
    for g, (saved, names) in enumerate(zip(groups, group_names)):
        saved_ids = list(saved["params"])
        if "names" in saved or (saved_ids and isinstance(saved_ids[0], str)):
            saved_names = saved.get("names", saved_ids)
            if set(saved_names) != set(names):
                missing, extra = sorted(set(names) - set(saved_names)), sorted(set(saved_names) - set(names))
                raise ValueError(f"optimizer state: group {g} holds other parameters (not saved: {missing[:5]}, "
                                 f"unknown: {extra[:5]})")
            by_name = dict(zip(saved_names, saved_ids))
            order = [by_name[n] for n in names]
        else:
            if len(saved_ids) != len(names):
                raise ValueError(f"optimizer state: group {g} has {len(saved_ids)} parameters saved, "
                                 f"the optimizer's has {len(names)}")
            order = saved_ids  # positional (OpenCLIP): same order as named_parameters()
        ids = []
        for name, old in zip(names, order):
            if old in state:
                entry = state[old]
                for key, value in entry.items():
                    if (torch.is_tensor(value) and value.ndim > 0 and key not in PER_TENSOR_STATE
                            and tuple(value.shape) != tuple(param_shapes[name])):
                        raise ValueError(f"optimizer state: {key} of {name!r} has shape {tuple(value.shape)}, the "
                                         f"parameter {tuple(param_shapes[name])} (a state saved for another model or "
                                         "parameter order)")
                new_state[next_id] = entry
            ids.append(next_id)
            next_id += 1
        new_groups.append({**{k: v for k, v in saved.items() if k not in ("params", "names")},
                           "params": ids, "names": list(names)})
    return {"state": new_state, "param_groups": new_groups}


def _group_names(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def to_clipfast_state(state: dict, optimizer, model, steps_per_epoch: int) -> dict:
    """A checkpoint dict (clipfast's or OpenCLIP's) in the form ``Trainer.load_state_dict`` reads, its optimizer
    state aligned by :func:`align_optimizer_state` to ``optimizer`` (whose groups hold parameters of ``model``).

    For OpenCLIP checkpoints ``step = epoch * steps_per_epoch`` and ``batch_in_epoch = 0`` (it saves at epoch ends).
    Sharded (FSDP2) models are left to ``torch.distributed.checkpoint``: the optimizer state passes unchanged.
    """

    state = dict(state)
    if is_open_clip_checkpoint(state):
        epoch = int(state["epoch"])
        state.update(step=epoch * steps_per_epoch, batch_in_epoch=0, rng=None, metrics={},
                     state_dict=_strip_module(state["state_dict"]), scaler=state.get("scaler"))
    if state.get("optimizer") is not None and not is_sharded(model):
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        state["optimizer"] = align_optimizer_state(state["optimizer"], _group_names(optimizer, model), shapes)
    return state


def to_open_clip_checkpoint(state: dict, model=None) -> dict:
    """A clipfast training checkpoint as ``open_clip_train --resume`` reads it:
    ``{"epoch", "name", "state_dict", "optimizer"[, "scaler"]}`` with an int-indexed optimizer state.

    A name-keyed (FSDP) optimizer state is re-indexed in OpenCLIP's group order, which needs ``model`` (its
    ``named_parameters()`` give the order inside each group; the groups' ``names`` give membership).
    """
    out = {"epoch": int(state["epoch"]), "name": state.get("name"), "state_dict": state["state_dict"]}
    optim = state.get("optimizer")
    if optim is not None:
        groups = optim["param_groups"]
        keyed_by_name = any(isinstance(p, str) for g in groups for p in g["params"])
        if keyed_by_name:
            if model is None:
                raise ValueError("to_open_clip_checkpoint: a name-keyed (FSDP) optimizer state needs model= for the "
                                 "parameter order")
            order = [n for n, _ in model.named_parameters()]
            group_names = [sorted(g.get("names", g["params"]), key=order.index) for g in groups]
            shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
            optim = align_optimizer_state(optim, group_names, shapes)
        out["optimizer"] = copy.copy(optim)
    if state.get("scaler") is not None:
        out["scaler"] = state["scaler"]
    return out
