"""Zero-shot classifier and accuracy, retrieval recall@k, linear probe, and the shapes evaluation."""
import pytest
import torch
import torch.nn.functional as F

from clipfast.train import evaluate as ev

E = 8


class Oracle(torch.nn.Module):
    """encode_image: the features stored in the image's first E pixels; encode_text: a fixed table row per token."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone(), requires_grad=False)  # (V, E)

    def encode_image(self, x, normalize=False):
        f = x.flatten(1)[:, :E]
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, tokens, normalize=False):
        f = self.table[tokens[:, 0]]
        return F.normalize(f, dim=-1) if normalize else f


def images_from(features):
    """(N, E) features -> (N, 3, 4, 4) images whose first E pixels are the features."""
    x = torch.zeros(features.shape[0], 3 * 16)
    x[:, :E] = features
    return x.reshape(-1, 3, 4, 4)


def test_zero_shot_classifier_is_renormalised_template_mean():
    table = torch.randn(50, E, dtype=torch.float64).float()
    words = {}

    def tokenizer(texts):  # one token per distinct text
        return torch.tensor([[words.setdefault(t, len(words)), 0] for t in texts])

    classnames, templates = ["cat", "dog", "red circle"], ["a {}.", "a photo of a {}.", lambda c: f"{c}!"]
    w = ev.zero_shot_classifier(Oracle(table), tokenizer, classnames, templates, num_classes_per_batch=2)
    assert w.shape == (E, 3) and w.dtype == torch.float32
    for k, c in enumerate(classnames):
        rows = [F.normalize(table[words[t]], dim=0) for t in (f"a {c}.", f"a photo of a {c}.", f"{c}!")]
        torch.testing.assert_close(w[:, k], F.normalize(torch.stack(rows).mean(0), dim=0))
    with pytest.raises(ValueError, match="templates"):
        ev.zero_shot_classifier(Oracle(table), tokenizer, classnames, [])


def test_zero_shot_eval_top1_top5():
    c = 7
    classifier = F.normalize(torch.randn(E, c), dim=0)
    labels = torch.arange(21) % c
    feats = classifier.T[labels].clone()
    feats[:5] = classifier.T[(labels[:5] + 1) % c]  # 5 wrong at top-1
    loader = [(images_from(feats[i:i + 6]), labels[i:i + 6]) for i in range(0, 21, 6)]
    out = ev.zero_shot_eval(Oracle(torch.zeros(1, E)), classifier, loader)
    assert out["zeroshot_top1"] == pytest.approx(16 / 21)
    assert out["zeroshot_top1"] <= out["zeroshot_top5"] <= 1
    # brute force top-5
    logits = F.normalize(feats, dim=-1) @ classifier
    assert out["zeroshot_top5"] == pytest.approx((logits.topk(5, 1).indices == labels[:, None]).any(1).float().mean().item())
    two = ev.zero_shot_eval(Oracle(torch.zeros(1, E)), classifier[:, :2], [(images_from(feats[:4]), labels[:4] % 2)])
    assert two["zeroshot_top5"] == 1.0  # top-5 among 2 classes


def _brute_recall(sim, k):
    ranks = [(row > row[i]).sum().item() + (row == row[i]).sum().item() - 1 for i, row in enumerate(sim)]
    return sum(r < k for r in ranks) / len(ranks)


def test_retrieval_recall_matches_brute_force():
    n = 30
    img = torch.randn(n, E)
    txt = img + 1.5 * torch.randn(n, E)  # noisy pairs: recall between 0 and 1
    table = txt
    loader = [(images_from(img[i:i + 8]), torch.arange(i, min(i + 8, n))[:, None].repeat(1, 3)) for i in range(0, n, 8)]
    out = ev.retrieval_eval(Oracle(table), loader)
    sim = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    for k in (1, 5, 10):
        assert out[f"image_to_text_R@{k}"] == pytest.approx(_brute_recall(sim, k))
        assert out[f"text_to_image_R@{k}"] == pytest.approx(_brute_recall(sim.T, k))
    assert 0 < out["image_to_text_R@1"] < out["image_to_text_R@10"] < 1
    assert out["retrieval_num_samples"] == n
    perfect = ev.retrieval_eval(Oracle(img), loader)
    assert perfect["image_to_text_R@1"] == perfect["text_to_image_R@1"] == 1.0


def test_retrieval_accepts_a_dataset():
    img = torch.randn(10, E)
    pairs = [(images_from(img[i:i + 1])[0], torch.tensor([i, 0])) for i in range(10)]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return pairs[i]

    out = ev.retrieval_eval(Oracle(img), DS(), batch_size=4)
    assert out["image_to_text_R@1"] == 1.0 and out["retrieval_num_samples"] == 10


def test_linear_probe_separable_deterministic_and_inside_inference_mode():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(4, E, generator=g)

    def loader(n, seed):
        gg = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 4, (n,), generator=gg)
        x = centres[y] + 0.3 * torch.randn(n, E, generator=gg)
        return [(images_from(x[i:i + 16]), y[i:i + 16]) for i in range(0, n, 16)]

    model = Oracle(torch.zeros(1, E))
    a = ev.linear_probe(model, loader(128, 1), loader(64, 2), steps=50)
    assert a["linear_probe_top1"] > 0.95
    with torch.inference_mode():  # the trainer evaluates inside inference mode
        b = ev.linear_probe(model, loader(128, 1), loader(64, 2), steps=50)
    assert a == b
    # random labels on the test side: near chance
    bad = [(im, torch.randint(0, 4, (len(y),), generator=g)) for im, y in loader(64, 2)]
    assert ev.linear_probe(model, loader(128, 1), bad, steps=50)["linear_probe_top1"] < 0.6


def test_evaluate_shapes_on_a_tiny_model():
    from clipfast.model import CLIP
    from clipfast.tokenizer import SimpleTokenizer

    model = CLIP(16, dict(image_size=16, layers=1, width=32, patch_size=8, head_width=16),
                 dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)).eval()
    tok = SimpleTokenizer(context_length=16)
    with torch.inference_mode():
        out = ev.evaluate_shapes(model, tok, num_samples=40, batch_size=20, seed=0)
    keys = {"zeroshot_top1", "zeroshot_top5", "seen_zeroshot_top1", "seen_zeroshot_top5", "unseen_class_zeroshot_top1",
            "unseen_class_zeroshot_top5", "image_to_text_R@1",
            "image_to_text_R@5", "image_to_text_R@10", "text_to_image_R@1", "text_to_image_R@5",
            "text_to_image_R@10", "linear_probe_top1", "chance_top1", "retrieval_num_samples"}
    assert set(out) == keys
    assert all(isinstance(v, float) and 0 <= v <= 1 for k, v in out.items() if k != "retrieval_num_samples")
    assert out["chance_top1"] == pytest.approx(1 / 30)
    with torch.inference_mode():
        again = ev.evaluate_shapes(model, tok, num_samples=40, batch_size=20, seed=0, probe=False)
    assert "linear_probe_top1" not in again
    assert again["zeroshot_top1"] == out["zeroshot_top1"]


def test_retrieval_on_datasets_with_bad_items():
    img = torch.randn(10, E)
    pairs = [(images_from(img[i:i + 1])[0], torch.tensor([i, 0])) for i in range(10)]

    class WithBad(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return None if i in (0, 1, 2, 3, 7) else pairs[i]

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([None if i == 7 else pairs[i] for i in range(10)])

    out = ev.retrieval_eval(Oracle(img), WithBad(), batch_size=4)  # first batch is all bad
    assert out["retrieval_num_samples"] == 5 and out["image_to_text_R@1"] == 1.0
    assert ev.retrieval_eval(Oracle(img), Stream(), batch_size=4)["retrieval_num_samples"] == 9
