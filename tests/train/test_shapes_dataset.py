"""The built-in shapes dataset: determinism, class coverage, the held-out split, images and captions."""
import numpy as np
import pytest
import torch

from clipfast.train import shapes_dataset
from clipfast.train.shapes_dataset import (COLOURS, POSITIONS, SHAPES, SHAPES_CLASSNAMES, SHAPES_TEMPLATES, SIZES,
                                           UNSEEN_COLOURS, UNSEEN_LABELS, UNSEEN_SHAPES, ShapesDataset, heldout_variants)


def test_classnames_and_templates():
    assert len(SHAPES_CLASSNAMES) == len(COLOURS) * len(SHAPES) >= 25
    assert len(set(SHAPES_CLASSNAMES)) == len(SHAPES_CLASSNAMES)
    assert SHAPES_CLASSNAMES[0] == f"{list(COLOURS)[0]} {SHAPES[0]}"
    assert all(t.count("{}") == 1 for t in SHAPES_TEMPLATES) and len(SHAPES_TEMPLATES) >= 3


@pytest.mark.parametrize("split", ["train", "val", "heldout", "unseen"])
def test_items_deterministic_and_well_formed(split):
    a = ShapesDataset(split, 40, image_size=32, seed=3)
    b = ShapesDataset(split, 40, image_size=32, seed=3)
    for i in (0, 7, 39):
        xa, ca, la = a[i]
        xb, cb, lb = b[i]
        assert torch.equal(xa, xb) and ca == cb and la == lb
        assert xa.shape == (3, 32, 32) and xa.dtype == torch.float32
        assert isinstance(ca, str) and 0 <= la < len(SHAPES_CLASSNAMES)
    # reading order does not matter
    assert torch.equal(a[5][0], ShapesDataset(split, 40, 32, 3)[5][0])
    # a different seed gives different data
    other = ShapesDataset(split, 40, image_size=32, seed=4)
    assert any(not torch.equal(a[i][0], other[i][0]) for i in range(5))


def test_splits_differ():
    tr, va = ShapesDataset("train", 20, seed=0), ShapesDataset("val", 20, seed=0)
    assert any(tr[i][1] != va[i][1] or not torch.equal(tr[i][0], va[i][0]) for i in range(20))


def _seen_attributes(n=1500):
    keys = ("colour", "shape", "size", "position")
    return {split: {tuple(ShapesDataset(split, n, 16, seed=0).attributes(i)[k] for k in keys) for i in range(n)}
            for split in ("train", "val", "heldout", "unseen")}


def test_heldout_combinations_never_in_train_or_val():
    seen = _seen_attributes()
    assert not seen["heldout"] & (seen["train"] | seen["val"])
    # every seen class is trained on, and appears in the held-out split
    unseen_names = {SHAPES_CLASSNAMES[k] for k in UNSEEN_LABELS}
    seen_names = set(SHAPES_CLASSNAMES) - unseen_names
    assert {f"{c} {s}" for c, s, _, _ in seen["train"]} == seen_names
    assert {f"{c} {s}" for c, s, _, _ in seen["heldout"]} == seen_names
    # the design: exactly the 2 variants per seen class of heldout_variants
    colours, positions = list(COLOURS), list(POSITIONS)
    expected = {(colours[c], SHAPES[s], SIZES[z], positions[p]) for c in range(len(COLOURS)) for s in range(len(SHAPES))
                for z, p in heldout_variants(c, s) if f"{colours[c]} {SHAPES[s]}" in seen_names}
    assert seen["heldout"] == expected
    assert len(expected) == 2 * len(seen_names)


def test_unseen_classes_never_in_train_val_or_heldout():
    """A 2 x 2 block of whole classes is held out; each of its colours and shapes is still trained on."""
    assert len(UNSEEN_COLOURS) == len(UNSEEN_SHAPES) == 2 and len(UNSEEN_LABELS) == 4
    assert {SHAPES_CLASSNAMES[k] for k in UNSEEN_LABELS} == {f"{c} {s}" for c in UNSEEN_COLOURS for s in UNSEEN_SHAPES}
    seen = _seen_attributes()
    block = {(c, s) for c in UNSEEN_COLOURS for s in UNSEEN_SHAPES}
    trained = seen["train"] | seen["val"] | seen["heldout"]
    assert not {(c, s) for c, s, _, _ in trained} & block
    # the unseen split draws every variant of exactly the block's classes
    assert {(c, s) for c, s, _, _ in seen["unseen"]} == block
    assert len(seen["unseen"]) == 4 * len(SIZES) * len(POSITIONS)
    # composable: every unseen colour is trained with another shape, every unseen shape with another colour
    for c in UNSEEN_COLOURS:
        assert {s for cc, s, _, _ in seen["train"] if cc == c} == set(SHAPES) - set(UNSEEN_SHAPES)
    for s in UNSEEN_SHAPES:
        assert {c for c, ss, _, _ in seen["train"] if ss == s} == set(COLOURS) - set(UNSEEN_COLOURS)
    # no training caption names an unseen class
    ds = ShapesDataset("train", 600, 16, seed=5)
    names = [SHAPES_CLASSNAMES[k] for k in UNSEEN_LABELS]
    assert not any(name in ds.draw(i)[1] for i in range(600) for name in names)
    labels = {ShapesDataset("unseen", 200, 16, seed=5)[i][2] for i in range(200)}
    assert labels == set(UNSEEN_LABELS)


def test_captions_name_colour_and_shape_and_label_matches():
    ds = ShapesDataset("train", 200, 32, seed=1)
    with_size = with_position = 0
    for i in range(200):
        _, caption, label = ds[i]
        attrs = ds.attributes(i)
        assert SHAPES_CLASSNAMES[label] == f"{attrs['colour']} {attrs['shape']}"
        assert f"{attrs['colour']} {attrs['shape']}" in caption
        with_size += attrs["size"] in caption
        with_position += any(p in caption for p in shapes_dataset._POSITION_PHRASES[attrs["position"]])
    assert 60 < with_size < 180 and 60 < with_position < 180  # sometimes, not always


def test_image_shows_the_colour_at_the_position():
    ds = ShapesDataset("train", 300, image_size=64, seed=2)
    centre = {"left": (32, 19), "right": (32, 45), "top": (19, 32), "bottom": (45, 32), "center": (32, 32)}
    for i in range(0, 300, 7):
        img, _, _ = ds.draw(i)
        a = ds.attributes(i)
        y, x = centre[a["position"]]
        window = img[y - 10:y + 11, x - 10:x + 11].astype(int)  # holds the centre of every shape and a ring's band
        close = (np.abs(window - np.array(COLOURS[a["colour"]])).max(axis=-1) < 45).sum()
        assert close >= 20, (a, close)
        # the opposite corner is background (dark)
        assert img[0, 0].max() < 90 or img[-1, -1].max() < 90


def test_transform_gets_pil_and_default_normalisation():
    seen = []
    ds = ShapesDataset("val", 3, image_size=24, transform=lambda im: seen.append(im.size) or "ok")
    assert ds[0][0] == "ok" and seen == [(24, 24)]
    raw, _, _ = ShapesDataset("val", 3, image_size=24).draw(0)
    x = ShapesDataset("val", 3, image_size=24)[0][0]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    torch.testing.assert_close(x * std + mean, torch.from_numpy(raw).permute(2, 0, 1).float() / 255, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="test"), "split"), (dict(num_samples=-1), "num_samples"), (dict(image_size=8), "image_size")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**{"split": "train", "num_samples": 4, **kwargs})


def test_index_errors():
    ds = ShapesDataset("train", 4)
    with pytest.raises(IndexError):
        ds[4]
    assert torch.equal(ds[-1][0], ds[3][0])
