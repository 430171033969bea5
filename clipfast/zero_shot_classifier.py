"""Zero-shot classifier weights from class names and prompt templates (OpenCLIP's ``open_clip.zero_shot_classifier``).

For class c with prompts ``t_1(c) .. t_T(c)``: ``w_c = normalize(mean_j normalize(encode_text(t_j(c))))``; the
classifier is ``W = [w_1 .. w_C]`` of shape ``(E, C)`` and ``logits = 100 * normalize(image_features) @ W``.
Runs under ``torch.no_grad()``; ``W`` has the dtype ``encode_text`` returns (e.g. fp16 under autocast), as OpenCLIP.
"""
from functools import partial
from itertools import islice
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ["batched", "build_zero_shot_classifier", "build_zero_shot_classifier_legacy"]


def batched(iterable, n):
    """Lists of ``n`` consecutive items of ``iterable`` (the last may be shorter)."""
    it = iter(iterable)
    while True:
        batch = list(islice(it, n))
        if not batch:
            break
        yield batch


def _check(classnames, templates):
    if not isinstance(templates, Sequence) or len(templates) == 0:
        raise ValueError("templates: expected a non-empty sequence of format strings or callables")
    if not isinstance(classnames, Sequence) or len(classnames) == 0:
        raise ValueError("classnames: expected a non-empty sequence of class names")
    return (lambda t, c: t.format(c)) if isinstance(templates[0], str) else (lambda t, c: t(c))


def build_zero_shot_classifier(
        model,
        tokenizer,
        classnames: Sequence[str],
        templates: Sequence[Union[Callable, str]],
        num_classes_per_batch: Optional[int] = 10,
        device: Union[str, torch.device] = "cpu",
        use_tqdm: bool = False,
):
    """Classifier weights ``(E, C)``, encoding ``num_classes_per_batch`` classes (times T prompts) per forward.

    Args:
        model: anything with ``encode_text(tokens, normalize=True) -> (N, E)``.
        tokenizer: ``tokenizer(list[str]) -> (N, L)`` token ids.
        classnames: C class names; templates: T ``str.format`` strings with one ``{}``, or callables.
        num_classes_per_batch: classes per forward; None or 0 encodes all C*T prompts at once.
        device: where the token ids go.
        use_tqdm: show a progress bar.
    """
    fill = _check(classnames, templates)
    num_templates = len(templates)
    if use_tqdm:
        import tqdm

        num_iter = 1 if num_classes_per_batch is None else (len(classnames) - 1) // num_classes_per_batch + 1
        iter_wrap = partial(tqdm.tqdm, total=num_iter, unit_scale=num_classes_per_batch)
    else:
        iter_wrap = iter

    def process(names):
        texts = [fill(t, c) for c in names for t in templates]
        emb = model.encode_text(tokenizer(texts).to(device), normalize=True)
        emb = emb.reshape(len(names), num_templates, -1).mean(dim=1)
        return (emb / emb.norm(dim=1, keepdim=True)).T

    with torch.no_grad():
        if num_classes_per_batch:
            return torch.cat([process(b) for b in iter_wrap(batched(classnames, num_classes_per_batch))], dim=1)
        return process(classnames)


def build_zero_shot_classifier_legacy(
        model,
        tokenizer,
        classnames: Sequence[str],
        templates: Sequence[Union[Callable, str]],
        device: Union[str, torch.device] = "cpu",
        use_tqdm: bool = False,
):
    """The same weights computed one class per forward (OpenCLIP's legacy loop); returns ``(E, C)`` on ``device``."""
    fill = _check(classnames, templates)
    iter_wrap = iter
    if use_tqdm:
        import tqdm

        iter_wrap = tqdm.tqdm
    with torch.no_grad():
        weights = []
        for c in iter_wrap(classnames):
            emb = model.encode_text(tokenizer([fill(t, c) for t in templates]).to(device))
            emb = F.normalize(emb, dim=-1).mean(dim=0)
            weights.append(emb / emb.norm())
        return torch.stack(weights, dim=1).to(device)
