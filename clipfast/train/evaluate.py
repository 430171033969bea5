"""Evaluation: zero-shot classification, image<->text retrieval recall@k, linear probe on frozen features.

All functions take an OpenCLIP-API model (``encode_image(x, normalize=True)``,
``encode_text(t, normalize=True)``) and run under ``torch.inference_mode()``; the linear probe
fits its logistic regression outside inference mode on the extracted (detached) features.

    zero-shot:  W[:, k] = normalize(mean_t normalize(encode_text(template_t(class_k))))   (E, C)
                pred = top-k of  normalize(encode_image(x)) @ W
    retrieval:  S = img_feats @ txt_feats.T (N, N); pair i is the match of row/column i;
                R@k = fraction of queries whose match ranks in the top k (ties count against)
    probe:      multinomial logistic regression (L-BFGS, fp32, weight decay) on normalised image
                features of a train loader, top-1 on a test loader
"""
import logging
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from clipfast.train.data import collate_drop_none
from clipfast.train.shapes_dataset import SHAPES_CLASSNAMES, SHAPES_TEMPLATES, ShapesDataset
from clipfast.zero_shot_classifier import build_zero_shot_classifier

__all__ = ["model_image_size", "zero_shot_classifier", "zero_shot_eval", "retrieval_eval", "linear_probe", "evaluate_shapes",
           "extract_features"]

log = logging.getLogger(__name__)


def model_image_size(model, default: int = 224) -> int:
    """Side of the square images ``model.visual`` takes (``image_size`` int or (H, W) tuple), else ``default``."""
    size = getattr(getattr(model, "visual", None), "image_size", default)
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def _device(model, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _input_dtype(model) -> torch.dtype:
    """dtype of the vision stem's weight (images are cast to it, as OpenCLIP's fp16/bf16/pure_* modes do)."""
    conv = getattr(getattr(model, "visual", None), "conv1", None)
    weight = getattr(conv, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return weight.dtype
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _as_loader(data, batch_size: int) -> Iterable:
    """``data`` itself if it yields batches, else a DataLoader over a dataset of pairs (bad items dropped)."""
    if isinstance(data, torch.utils.data.Dataset):
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_drop_none)
    return data


def zero_shot_classifier(model, tokenizer: Callable, classnames: Sequence[str], templates: Sequence,
                         device=None, num_classes_per_batch: int = 10) -> torch.Tensor:
    """Per-class text embeddings averaged over prompt templates, returned in fp32.

    :func:`clipfast.zero_shot_classifier.build_zero_shot_classifier` (OpenCLIP's: the template mean is taken in
    the dtype ``encode_text`` returns, e.g. bf16 for a bf16 model) under inference mode, then cast to fp32 and
    renormalised per column.

    Args:
        model: CLIP with ``encode_text(tokens, normalize=True)``.
        tokenizer: ``tokenizer(list[str]) -> (n, context_length)`` int64 tensor.
        classnames: C class names.
        templates: T format strings with one ``{}`` (or callables ``name -> str``).
        device: where to run (default: the model's).
        num_classes_per_batch: classes encoded per forward (C*T prompts are split in such batches).

    Returns:
        (E, C) float32 tensor; column k = normalize(mean over templates of normalised embeddings of class k).
    """
    if not classnames:
        raise ValueError("classnames: expected at least one class name")
    if not templates:
        raise ValueError("templates: expected at least one template")
    device = _device(model, device)
    with torch.inference_mode():
        fill = [t if callable(t) else t.format for t in templates]  # strings and callables may mix
        classifier = build_zero_shot_classifier(model, tokenizer, list(classnames), fill,
                                                num_classes_per_batch=max(1, num_classes_per_batch), device=device)
    return F.normalize(classifier.float(), dim=0).contiguous()


def _batch_parts(batch):
    """(images, second) from a batch tuple/list or dict (``image``/``text``/``label`` keys)."""
    if isinstance(batch, dict):
        return batch["image"], batch.get("label", batch.get("text"))
    return batch[0], batch[1]


def _encode_images(model, images, device):
    return model.encode_image(images.to(device=device, dtype=_input_dtype(model)), normalize=True).float()


def _accuracy(logits: torch.Tensor, target: torch.Tensor, topk=(1, 5)) -> list[int]:
    k = min(max(topk), logits.shape[1])
    pred = logits.topk(k, dim=1).indices
    hit = pred == target[:, None]
    return [int(hit[:, :min(t, k)].any(dim=1).sum()) for t in topk]


def zero_shot_eval(model, classifier: torch.Tensor, loader: Iterable, device=None) -> dict[str, float]:
    """Top-1 / top-5 accuracy of ``logits = 100 * normalize(encode_image(x)) @ classifier``.

    Args:
        classifier: (E, C) from :func:`zero_shot_classifier`.
        loader: batches ``(images (B, 3, H, W), labels (B,) int)`` (extra tuple items are ignored).

    Returns:
        ``{"zeroshot_top1", "zeroshot_top5"}`` fractions in [0, 1] (top-5 = top-C when C < 5).
    """
    device = _device(model, device)
    classifier = classifier.to(device=device, dtype=torch.float32)
    top1 = top5 = n = 0
    with torch.inference_mode():
        for batch in loader:
            images, labels = _batch_parts(batch)
            logits = 100.0 * _encode_images(model, images, device) @ classifier
            a1, a5 = _accuracy(logits, torch.as_tensor(labels, device=device))
            top1, top5, n = top1 + a1, top5 + a5, n + images.shape[0]
    if n == 0:
        raise ValueError("loader: yielded no samples")
    return {"zeroshot_top1": top1 / n, "zeroshot_top5": top5 / n}


def retrieval_eval(model, loader, device=None, batch_size: int = 256) -> dict[str, float]:
    """Image<->text retrieval recall@1/5/10 over all pairs of ``loader``.

    Args:
        loader: batches ``(images (B, 3, H, W), tokens (B, L))`` of matching pairs, or a dataset
            (map-style or iterable, e.g. from ``data.build_dataset``) of such pairs, batched with
            ``batch_size``; None items (bad samples) are dropped.

    Returns:
        ``{"image_to_text_R@k", "text_to_image_R@k"}`` for k in 1, 5, 10 and ``"retrieval_num_samples"``.
        Duplicate captions count as distinct texts (only the paired one is a hit), as OpenCLIP.
    """
    device = _device(model, device)
    img, txt = [], []
    with torch.inference_mode():
        for batch in _as_loader(loader, batch_size):
            if batch is None:  # every item of the batch was a bad sample
                continue
            images, tokens = _batch_parts(batch)
            img.append(_encode_images(model, images, device))
            txt.append(model.encode_text(tokens.to(device), normalize=True).float())
    if not img:
        raise ValueError("loader: yielded no samples")
    img, txt = torch.cat(img), torch.cat(txt)
    sim = img @ txt.T  # (N, N)
    n = sim.shape[0]
    out = {}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        true = s.diagonal()[:, None]
        rank = (s > true).sum(dim=1) + ((s == true).sum(dim=1) - 1)  # ties rank ahead of the match
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = float((rank < k).float().mean())
    out["retrieval_num_samples"] = float(n)
    return out


def extract_features(model, loader: Iterable, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image features (N, E) float32 and labels (N,) int64 of a ``(images, labels)`` loader, on CPU."""
    device = _device(model, device)
    feats, labels = [], []
    with torch.inference_mode():
        for batch in loader:
            images, y = _batch_parts(batch)
            feats.append(_encode_images(model, images, device).cpu())
            labels.append(torch.as_tensor(y).cpu().long())
    if not feats:
        raise ValueError("loader: yielded no samples")
    return torch.cat(feats), torch.cat(labels)


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, steps: int) -> torch.nn.Linear:
    head = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def linear_probe(model, train_loader: Iterable, test_loader: Iterable, device=None, *, num_classes: Optional[int] = None,
                 weight_decay: float = 1e-2, steps: int = 200) -> dict[str, float]:
    """Logistic regression on frozen, normalised image features; deterministic (zero init, full-batch L-BFGS).

    Args:
        train_loader / test_loader: batches ``(images, labels)``.
        num_classes: number of classes (default: 1 + the largest label seen).
        weight_decay: L2 penalty on the weights (features are standardised with train statistics first;
            1e-2 was best of 1e-4..1e-2 for a tiny CLIP on the shapes data).
        steps: L-BFGS iterations.

    Returns:
        ``{"linear_probe_top1"}`` on the test features.
    """
    xtr, ytr = extract_features(model, train_loader, device)
    xte, yte = extract_features(model, test_loader, device)
    c = num_classes or int(max(ytr.max(), yte.max())) + 1
    # Outside inference mode (the trainer evaluates inside it) and autocast: clone makes normal tensors.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        xtr, ytr, xte, yte = xtr.clone(), ytr.clone(), xte.clone(), yte.clone()
        # Standardise with train statistics so one lr/decay fits every feature scale.
        mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
        head = _fit_logreg((xtr - mean) / std, ytr, c, weight_decay, steps)
        with torch.no_grad():
            pred = head((xte - mean) / std).argmax(dim=1)
    return {"linear_probe_top1": float((pred == yte).float().mean())}


def _label_loader(dataset, batch_size: int) -> torch.utils.data.DataLoader:
    """(images, labels) batches of a ShapesDataset (captions dropped)."""
    def collate(items):
        return torch.stack([it[0] for it in items]), torch.tensor([it[2] for it in items])

    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


def evaluate_shapes(model, tokenizer: Callable, *, image_size: Optional[int] = None, num_samples: int = 1000,
                    device=None, seed: int = 0, batch_size: int = 256, probe: bool = True) -> dict[str, float]:
    """Zero-shot, retrieval and linear-probe metrics on the built-in shapes data.

    * zero-shot of classes never trained on: ``unseen`` images (the 2 x 2 block of colour x shape
      classes absent from every training image and caption), classified among ALL 30 classes with
      ``SHAPES_TEMPLATES`` ensembling -> ``unseen_class_zeroshot_top1/top5`` (CLIP's zero-shot);
    * zero-shot of unseen attribute combinations of trained classes: ``heldout`` images, among all
      30 classes -> ``zeroshot_top1/top5``; also on ``val`` (seen combinations) -> ``seen_zeroshot_top1/top5``.
    * retrieval on ``val`` image/caption pairs -> ``image_to_text_R@k``, ``text_to_image_R@k``.
    * linear probe: train on ``num_samples`` ``train`` images (seed + 1), test on the heldout images
      -> ``linear_probe_top1`` (skipped with ``probe=False``).

    Args:
        model: CLIP (OpenCLIP API); put in eval mode by the caller.
        tokenizer: ``tokenizer(list[str]) -> (n, L)`` int64.
        image_size: side of the images (default: ``model.visual.image_size`` or 32).
        num_samples: images per split.
        seed: data seed; eval streams use ``seed + 10_000``.
        batch_size: eval batch size.

    Returns:
        flat dict of floats; ``chance_top1`` = 1/30 for reference.
    """
    if image_size is None:
        image_size = model_image_size(model, default=32)
    seed += 10_000
    device = _device(model, device)

    classifier = zero_shot_classifier(model, tokenizer, SHAPES_CLASSNAMES, SHAPES_TEMPLATES, device)
    heldout = ShapesDataset("heldout", num_samples, image_size, seed)
    val = ShapesDataset("val", num_samples, image_size, seed)
    metrics = dict(zero_shot_eval(model, classifier, _label_loader(heldout, batch_size), device))
    seen = zero_shot_eval(model, classifier, _label_loader(val, batch_size), device)
    metrics.update({f"seen_{k}": v for k, v in seen.items()})
    unseen = zero_shot_eval(model, classifier, _label_loader(ShapesDataset("unseen", num_samples, image_size, seed),
                                                            batch_size), device)
    metrics.update({f"unseen_class_{k}": v for k, v in unseen.items()})

    def pairs(items):
        return (torch.stack([it[0] for it in items]), tokenizer([it[1] for it in items]))

    metrics.update(retrieval_eval(model, torch.utils.data.DataLoader(val, batch_size=batch_size, collate_fn=pairs),
                                  device))
    if probe:
        train = ShapesDataset("train", num_samples, image_size, seed + 1)
        metrics.update(linear_probe(model, _label_loader(train, batch_size), _label_loader(heldout, batch_size),
                                    device, num_classes=len(SHAPES_CLASSNAMES)))
    metrics["chance_top1"] = 1.0 / len(SHAPES_CLASSNAMES)
    return metrics
