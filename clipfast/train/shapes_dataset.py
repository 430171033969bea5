"""The built-in dataset: procedurally drawn coloured shapes with template captions (no download).

Each image is one shape on a dark, noisy background; the caption names its colour and shape and,
usually, its size and position ("a photo of a small red circle on the left."). Classes are the
colour x shape pairs: 6 colours x 5 shapes = 30 classes (``SHAPES_CLASSNAMES[label]``, label =
``colour_index * 5 + shape_index``), chance top-1 = 3.3%.

Unseen classes (true zero-shot). A block of 2 colours x 2 shapes, ``UNSEEN_COLOURS`` x
``UNSEEN_SHAPES`` (green/purple x square/ring, 4 of the 30 classes), never appears in a ``train``,
``val`` or ``heldout`` image or caption; the ``unseen`` split draws only these classes (all 10
size x position variants). Each unseen colour is still trained with the 3 other shapes and each
unseen shape with the 4 other colours, so the model can compose them; and since two unseen
classes share each colour (and each shape), neither attribute alone names the class.
``UNSEEN_LABELS`` are their labels; classification is among all 30 classes.

Held-out split (compositional generalisation). An image's attributes are the tuple
(colour, shape, size, position) with 2 sizes x 5 positions = 10 (size, position) variants per class.
For class (c, s) two variants are held out::

    (size (c + s) % 2,     position (c + 2 s) % 5)
    (size (c + s + 1) % 2, position (c + 2 s + 2) % 5)

``train`` and ``val`` draw only the other 8 variants of every seen class; ``heldout`` draws only
these 2 (of the 26 seen classes). So every seen class is trained on, every size and position is
trained on with every colour and shape, but the held-out (colour, shape, size, position) tuples are
never seen in training. ``train`` and ``val`` are disjoint random streams over the same attribute
combinations.

Determinism: item ``i`` of a split is a pure function of ``(seed, split, i)`` (numpy PCG64 seeded
with ``[seed, split_id, i]``), independent of workers, order and process. Drawing one 32x32 image
takes about 90 us on one core (vectorised numpy masks, noise cropped from fixed tiles).
"""
import functools
from typing import Callable, Optional

import numpy as np
import torch

__all__ = ["ShapesDataset", "SHAPES_CLASSNAMES", "SHAPES_TEMPLATES", "SHAPES_CAPTION_TEMPLATES", "COLOURS", "SHAPES",
           "SIZES", "POSITIONS", "UNSEEN_COLOURS", "UNSEEN_SHAPES", "UNSEEN_LABELS", "heldout_variants", "describe"]

# Colours chosen to be far apart in RGB and to start with a consonant ("a ... " reads right).
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 80, 235),
    "yellow": (235, 215, 30),
    "purple": (150, 50, 200),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
SIZES = ("small", "large")
# Position name -> (centre x, centre y) as fractions of the image side.
POSITIONS = {
    "left": (0.3, 0.5),
    "right": (0.7, 0.5),
    "top": (0.5, 0.3),
    "bottom": (0.5, 0.7),
    "center": (0.5, 0.5),
}
_POSITION_PHRASES = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "center": ("in the center", "in the middle"),
}
_RADIUS = {"small": 0.17, "large": 0.26}  # fraction of the image side

SHAPES_CLASSNAMES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
# Zero-shot prompt templates (ensembled per class by ``evaluate.zero_shot_classifier``).
SHAPES_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a drawing of a {}.", "a {}.", "an image of a {}.")
# Caption templates used in training ({} = "[size] colour shape [position]").
SHAPES_CAPTION_TEMPLATES = SHAPES_TEMPLATES + ("a rendering of a {}.", "there is a {}.", "a {}")

# The block of classes never trained on (see the module docstring).
UNSEEN_COLOURS = ("green", "purple")
UNSEEN_SHAPES = ("square", "ring")
UNSEEN_LABELS = tuple(sorted(list(COLOURS).index(c) * len(SHAPES) + SHAPES.index(s)
                             for c in UNSEEN_COLOURS for s in UNSEEN_SHAPES))
_SEEN_LABELS = tuple(k for k in range(len(SHAPES_CLASSNAMES)) if k not in UNSEEN_LABELS)

_SPLITS = {"train": 0, "val": 1, "heldout": 2, "unseen": 3}
_OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
_OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
_SCALE = 1.0 / (255.0 * _OPENAI_STD)  # (x / 255 - mean) / std = x * scale - shift
_SHIFT = _OPENAI_MEAN / _OPENAI_STD


def heldout_variants(colour: int, shape: int) -> tuple[tuple[int, int], ...]:
    """The two (size index, position index) variants of class (colour, shape) held out of training."""
    return (((colour + shape) % 2, (colour + 2 * shape) % 5),
            ((colour + shape + 1) % 2, (colour + 2 * shape + 2) % 5))


@functools.lru_cache(maxsize=None)
def _variants(split: str) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per class label, the (size, position) variants the split draws from (``unseen``: all 10)."""
    if split == "unseen":
        every = tuple((z, p) for z in range(len(SIZES)) for p in range(len(POSITIONS)))
        return (every,) * len(SHAPES_CLASSNAMES)
    out = []
    for c in range(len(COLOURS)):
        for s in range(len(SHAPES)):
            held = set(heldout_variants(c, s))
            every = [(z, p) for z in range(len(SIZES)) for p in range(len(POSITIONS))]
            out.append(tuple(v for v in every if (v in held) == (split == "heldout")))
    return tuple(out)


_NOISE_TILES, _NOISE_PAD = 4, 16


@functools.lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    """Fixed standard-normal tiles (4, size + 16, size + 16, 3) float32; images take random crops of them."""
    return np.random.default_rng(12345).standard_normal((_NOISE_TILES, size + _NOISE_PAD, size + _NOISE_PAD, 3),
                                                         dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy, xx


def _mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of ``shape`` with radius ``r`` given pixel offsets from its centre."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.82 * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= 0.25 * r * r)
    if shape == "triangle":  # apex up, base at +0.8 r
        top, base = -r, 0.8 * r
        t = (dy - top) / (base - top)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
    if shape == "cross":
        arm = max(0.3 * r, 0.75)
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"shape: unknown shape {shape!r}; expected one of {SHAPES}")


def describe(colour: str, shape: str, size: Optional[str] = None, position: Optional[str] = None) -> str:
    """The caption phrase ``"[size] colour shape [position phrase]"``, e.g. ``"small red circle on the left"``."""
    words = ([size] if size else []) + [colour, shape]
    if position:
        words.append(_POSITION_PHRASES[position][0])
    return " ".join(words)


class ShapesDataset(torch.utils.data.Dataset):
    """Coloured shapes with captions, generated on the fly; see the module docstring for the design.

    Args:
        split: ``"train"``, ``"val"``, ``"heldout"`` (only attribute tuples never drawn in train/val)
            or ``"unseen"`` (only the ``UNSEEN_LABELS`` classes, never drawn in the other splits).
        num_samples: length of the dataset.
        image_size: side H = W of the images in pixels (>= 16).
        seed: selects the stream; item ``i`` depends only on ``(seed, split, i)``.
        transform: applied to the RGB ``PIL.Image`` instead of the built-in float conversion
            (e.g. an OpenCLIP preprocess); None returns the tensor normalised with OpenAI mean/std.

    Items: ``(image, caption, label)``: image (3, H, W) float32 (or ``transform``'s output),
    caption ``str``, label ``int`` in ``[0, 30)`` indexing ``SHAPES_CLASSNAMES``.
    ``attributes(i)`` gives the drawn (colour, shape, size, position) names of item ``i``.
    """

    classnames = SHAPES_CLASSNAMES
    templates = SHAPES_TEMPLATES

    def __init__(self, split: str = "train", num_samples: int = 10000, image_size: int = 32, seed: int = 0,
                 transform: Optional[Callable] = None):
        if split not in _SPLITS:
            raise ValueError(f"split: expected one of {tuple(_SPLITS)}, got {split!r}")
        if int(num_samples) < 0:
            raise ValueError(f"num_samples: expected >= 0, got {num_samples}")
        if int(image_size) < 16:
            raise ValueError(f"image_size: expected >= 16 pixels, got {image_size}")
        self.split, self.num_samples, self.image_size = split, int(num_samples), int(image_size)
        self.seed, self.transform = int(seed), transform

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _SPLITS[self.split], index])

    def _draw_attributes(self, rng: np.random.Generator) -> tuple[int, int, int, int]:
        labels = UNSEEN_LABELS if self.split == "unseen" else _SEEN_LABELS
        label = labels[int(rng.integers(len(labels)))]
        variants = _variants(self.split)[label]
        z, p = variants[int(rng.integers(len(variants)))]
        return label, label // len(SHAPES), z, p

    def attributes(self, index: int) -> dict:
        """``{"colour", "shape", "size", "position", "label"}`` of item ``index``."""
        label, _, z, p = self._draw_attributes(self._rng(self._check_index(index)))
        return {"colour": list(COLOURS)[label // len(SHAPES)], "shape": SHAPES[label % len(SHAPES)],
                "size": SIZES[z], "position": list(POSITIONS)[p], "label": label}

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a ShapesDataset of {self.num_samples} samples")
        return index

    def draw(self, index: int) -> tuple[np.ndarray, str, int]:
        """Item ``index`` as ``(uint8 array (H, W, 3), caption, label)``."""
        rng = self._rng(self._check_index(index))
        label, c, z, p = self._draw_attributes(rng)
        colour, shape = list(COLOURS)[c], SHAPES[label % len(SHAPES)]
        size, position = SIZES[z], list(POSITIONS)[p]
        n = self.image_size
        u = rng.random(14)
        r = _RADIUS[size] * n * (0.9 + 0.2 * u[0])
        fx, fy = POSITIONS[position]
        cx = (fx + 0.06 * (u[1] - 0.5)) * n
        cy = (fy + 0.06 * (u[2] - 0.5)) * n
        yy, xx = _grid(n)
        mask = _mask(shape, xx - cx, yy - cy, r)
        oy, ox = (int(v * _NOISE_PAD) for v in u[8:10])
        noise = _noise_bank(n)[int(u[10] * _NOISE_TILES), oy:oy + n, ox:ox + n]  # (n, n, 3) standard normal
        rgb = np.asarray(COLOURS[colour], dtype=np.float32) + (30.0 * u[11:14] - 15.0).astype(np.float32)
        background = np.float32(10.0 + 50.0 * u[3])
        # shape: jittered colour + noise of std 4; background: its level + noise of std 6
        img = np.where(mask[..., None], rgb + 4.0 * noise, background + 6.0 * noise)
        image = np.clip(img, 0, 255, out=img).astype(np.uint8)
        phrase = describe(colour, shape, size if u[4] < 0.6 else None, None)
        if u[5] < 0.6:
            phrases = _POSITION_PHRASES[position]
            phrase = f"{phrase} {phrases[int(u[6] * len(phrases))]}"
        template = SHAPES_CAPTION_TEMPLATES[int(u[7] * len(SHAPES_CAPTION_TEMPLATES))]
        return image, template.format(phrase), label

    def __getitem__(self, index: int):
        image, caption, label = self.draw(index)
        if self.transform is not None:
            from PIL import Image

            return self.transform(Image.fromarray(image, "RGB")), caption, label
        x = image.astype(np.float32) * _SCALE - _SHIFT  # (H, W, 3) normalised
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), caption, label
