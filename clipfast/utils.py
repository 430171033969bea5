"""OpenCLIP's ``open_clip.utils`` helpers with the same signatures and behaviour.

- ``freeze_batch_norm_2d(module, module_match={}, name='')``: BatchNorm2d / SyncBatchNorm -> torchvision's
  ``FrozenBatchNorm2d`` (same values), recursively; returns the (possibly new) module.
- ``to_1tuple`` ... ``to_4tuple``, ``to_ntuple(n, x)``: an iterable unchanged, else ``(x,) * n``.
- ``replace_linear(model, linear_replacement, include_modules=['c_fc', 'c_proj'], copy_weights=True)``: swap the
  ``nn.Linear`` children with those names for ``linear_replacement(in_features, out_features, bias)`` (e.g.
  bitsandbytes int8 linears, ``--use-bnb-linear``). clipfast's fused ``LinearQuickGELU`` ``c_fc`` (QuickGELU models)
  is replaced too, and its activation moves to the ``gelu`` slot next to it, so the math stays
  ``c_proj(quick_gelu(c_fc(x)))``.
- ``convert_int8_model_to_inference_mode(model)``: ``prepare_for_eval()`` on every module that has it.
- ``feature_take_indices(num_features, indices=None, as_set=False)``: absolute indices of "take the last n" or an
  explicit (possibly negative) index list -> ``(indices, max index)``.
"""
import collections.abc
from itertools import repeat

from torch import nn

from clipfast.nn.quick_gelu import LinearQuickGELU, QuickGELU

__all__ = ["freeze_batch_norm_2d", "to_1tuple", "to_2tuple", "to_3tuple", "to_4tuple", "to_ntuple",
           "replace_linear", "convert_int8_model_to_inference_mode", "feature_take_indices"]


def freeze_batch_norm_2d(module, module_match={}, name=""):  # noqa: B006 (OpenCLIP's signature)
    """Convert ``BatchNorm2d``/``SyncBatchNorm`` layers (all, or those whose full name is in ``module_match``)
    into ``FrozenBatchNorm2d`` holding the same weight, bias, running stats and eps. A BN ``module`` itself is
    returned converted; otherwise its children are converted in place and ``module`` is returned."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    is_match = name in module_match if module_match else True
    if is_match and isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        res = FrozenBatchNorm2d(module.num_features)
        res.num_features = module.num_features
        res.affine = module.affine
        if module.affine:
            res.weight.data = module.weight.data.clone().detach()
            res.bias.data = module.bias.data.clone().detach()
        res.running_mean.data = module.running_mean.data
        res.running_var.data = module.running_var.data
        res.eps = module.eps
        return res
    for child_name, child in module.named_children():
        full_name = f"{name}.{child_name}" if name else child_name
        new_child = freeze_batch_norm_2d(child, module_match, full_name)
        if new_child is not child:
            module.add_module(child_name, new_child)
    return module


def _ntuple(n):
    def parse(x):
        if isinstance(x, collections.abc.Iterable):
            return x
        return tuple(repeat(x, n))
    return parse


to_1tuple = _ntuple(1)
to_2tuple = _ntuple(2)
to_3tuple = _ntuple(3)
to_4tuple = _ntuple(4)


def to_ntuple(n, x):
    return _ntuple(n)(x)


def replace_linear(model, linear_replacement, include_modules=["c_fc", "c_proj"], copy_weights=True):  # noqa: B006
    """Replace every ``nn.Linear`` child named in ``include_modules`` (recursively) by
    ``linear_replacement(in_features, out_features, bias: bool)``, copying weight and bias when ``copy_weights``.

    Returns ``model`` (modified in place), as OpenCLIP's.
    """

    for name, module in list(model.named_children()):
        if len(list(module.children())) > 0:
            replace_linear(module, linear_replacement, include_modules, copy_weights)
        if isinstance(module, nn.Linear) and name in include_modules:
            new = linear_replacement(module.in_features, module.out_features, module.bias is not None)
            if copy_weights:
                new.weight.data.copy_(module.weight.data)
                if new.bias is not None:
                    new.bias.data.copy_(module.bias.data)
            model._modules[name] = new
            if isinstance(module, LinearQuickGELU):
                # The activation was fused into c_fc; the plain replacement needs it back in the gelu slot.
                if not isinstance(model._modules.get("gelu"), nn.Identity):
                    raise NotImplementedError(f"replace_linear: cannot unfuse QuickGELU from {name!r}: its parent has "
                                              "no nn.Identity 'gelu' slot to hold the activation")
                model._modules["gelu"] = QuickGELU()
    return model


def convert_int8_model_to_inference_mode(model):
    """Call ``prepare_for_eval()`` on each module that has it (bitsandbytes int8 linears), recording the
    original weight dtype as ``int8_original_dtype``."""
    for m in model.modules():
        if hasattr(m, "prepare_for_eval"):
            int8_original_dtype = m.weight.dtype
            m.prepare_for_eval()
            m.int8_original_dtype = int8_original_dtype


def feature_take_indices(num_features, indices=None, as_set=False):
    """Absolute indices to take from ``num_features`` features -> ``(indices list or set, max index)``.

    ``indices``: None (all), an int n (the last n), or a sequence of indices (negative counts from the end).
    Raises ``ValueError`` naming the index when one is out of range.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"indices: last-n ({indices}) is out of range (1 to {num_features})")
        take = [num_features - indices + i for i in range(indices)]
    else:
        take = []
        for i in indices:
            idx = num_features + i if i < 0 else i
            if not 0 <= idx < num_features:
                raise ValueError(f"indices: feature index {idx} is out of range (0 to {num_features - 1})")
            take.append(idx)
    return (set(take) if as_set else take), max(take)
