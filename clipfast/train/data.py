"""Training data: image-caption datasets and a deterministic, resumable, bad-sample-tolerant loader.

Sources (``build_dataset``), each yielding ``(image (3, H, W) float, token_ids (L,) int64)`` pairs:

* ``shapes``: the built-in coloured-shapes captions (:mod:`clipfast.train.shapes_dataset`), no files.
* ``csv``: a CSV/TSV with an image-path column and a caption column (OpenCLIP's ``--csv-*`` flags);
  relative paths are tried against the working directory, then the CSV's folder.
* ``folder``: image files (jpg/jpeg/png/webp/bmp, recursively) each with a sidecar ``<stem>.txt``.
* ``webdataset``: tar shards (brace notation ``/d/{000..099}.tar``, or ``::``-separated lists) of
  ``jpg;png;jpeg;webp`` + ``txt`` samples, read with ``webdataset``'s tar iterators.
* ``synthetic``: random images and token ids (pipeline speed tests).

Bad samples. An image that is missing, truncated or undecodable is replaced in the worker, so batches
stay full (data-parallel ranks must all-gather equal batch sizes): map-style data draws another index
(a deterministic function of the item's seed), webdataset moves on to the next sample of the stream.
Every failed load is counted: ``loader.num_skipped`` (this iteration) and a warning at the end of each
pass. A shard that cannot be read any further is logged, skipped and counted. When more than
``max_bad_fraction`` (default 0.5) of the first ``bad_window`` (1000) loads of a pass fail, iterating raises
``BadDataError`` naming an example (CSV file and line, image path, or shard and member) - a dataset that is
mostly broken stops the run instead of training on nothing.

Order (``build_dataloader``). Map-style data: epoch ``e`` uses the permutation seeded by
``(seed, e)``; global batch ``i`` is ``perm[i*B*W:(i+1)*B*W]`` and rank ``r`` takes its ``r``-th
slice of ``B``, so the data seen is independent of the worker count. Per-sample randomness
(augmentation) is seeded by ``(seed, epoch, index)``. ``skip_batches=k`` starts at batch ``k`` of the
same order, so a resumed run sees exactly the batches the uninterrupted one would have.
Webdataset: shards are shuffled by ``(seed, epoch)`` and dealt to ``rank * workers + worker``
(samples are dealt instead when there are fewer shards than readers); see :class:`WebDatasetPairs`.
"""
import copy
import csv
import io
import logging
import random
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from clipfast.train.badsamples import DEFAULT_BAD_WINDOW, DEFAULT_MAX_BAD_FRACTION, BadSampleMonitor
from clipfast.train.shapes_dataset import ShapesDataset

__all__ = ["build_dataset", "build_dataloader", "collate_drop_none", "expand_shards", "CsvDataset", "FolderDataset",
           "WebDatasetPairs", "ShapesPairs", "SyntheticDataset", "Loader", "IMAGE_EXTENSIONS"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
WDS_IMAGE_KEYS = ("jpg", "png", "jpeg", "webp")
DATASET_TYPES = ("shapes", "csv", "folder", "webdataset", "synthetic", "auto")
SHAPES_DEFAULT_SAMPLES = 10_000


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes and runs)."""
    return int(np.random.SeedSequence([int(v) % (1 << 32) for v in values]).generate_state(1, np.uint64)[0] >> 1)


def _seeded_call(item_seed: int, fn: Callable, *args):
    """``fn(*args)`` with torch's CPU and Python's RNGs seeded by ``item_seed``, both restored afterwards."""
    py_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            return fn(*args)
    finally:
        random.setstate(py_state)


def expand_shards(spec: str) -> list[str]:
    """Shard URLs of ``spec``: ``::``-separated parts, each brace-expanded (``a/{000..009}.tar``)."""
    import braceexpand

    return [s for part in str(spec).split("::") if part for s in braceexpand.braceexpand(part)]


def _open_image(source) -> tuple:
    """``(RGB PIL image, None)`` from a path or bytes, or ``(None, reason)`` when missing or undecodable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
            return im.convert("RGB"), None  # forces the full decode inside the try
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad sample
        log.debug("bad image %s: %s", source if not isinstance(source, (bytes, bytearray)) else "<bytes>", e)
        return None, f"{type(e).__name__}: {e}"


def _to_tensor(image) -> torch.Tensor:
    """Fallback transform: PIL RGB -> (3, H, W) float in [0, 1]."""
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return x.permute(2, 0, 1).float().div_(255)


def _tokens(tokenizer: Callable, caption: str) -> torch.Tensor:
    return tokenizer([caption])[0]


class _PairMixin:
    """Shared by the file datasets: turn (image source, caption) into a pair or None.

    After a None, ``last_error`` says why (read by ``describe_bad`` in the same process).
    """

    transform: Optional[Callable]
    tokenizer: Callable
    last_error: str = ""

    def _pair(self, source, caption: Optional[str]):
        if caption is None:
            self.last_error = "no caption"
            return None
        image, self.last_error = _open_image(source)
        if image is None:
            return None
        try:
            x = (self.transform or _to_tensor)(image)
        except Exception as e:  # noqa: BLE001 - e.g. a zero-sized image through a crop
            log.debug("transform failed: %s", e)
            self.last_error = f"transform failed: {type(e).__name__}: {e}"
            return None
        return x, _tokens(self.tokenizer, caption)


class CsvDataset(_PairMixin, torch.utils.data.Dataset):
    """Image-caption pairs listed in a CSV/TSV file (OpenCLIP's ``CsvDataset``).

    Args:
        path: the CSV file.
        transform: PIL image -> tensor (e.g. OpenCLIP's preprocess); None gives [0, 1] floats.
        tokenizer: ``tokenizer(list[str]) -> (n, L)`` int64.
        img_key / caption_key: column names of the image path and the caption.
        sep: column separator.

    Items: ``(image, tokens (L,))`` or None for a missing/corrupt image or a short row (replaced by the
    loader); ``describe_bad(i)`` names the file, line and reason.
    """

    def __init__(self, path, transform, tokenizer, img_key="filepath", caption_key="title", sep="\t"):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"data: CSV file {str(path)!r} does not exist")
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=sep)
            try:
                fields = reader.fieldnames or []
                for key, flag in ((img_key, "csv_img_key"), (caption_key, "csv_caption_key")):
                    if key not in fields:
                        raise ValueError(f"{flag}: column {key!r} not in {str(path)!r} (columns: {fields}; "
                                         f"separator {sep!r})")
                rows = [(r[img_key], r[caption_key], reader.line_num) for r in reader]
            except (csv.Error, UnicodeDecodeError) as e:
                raise ValueError(f"data: {str(path)!r}, near line {reader.line_num + 1}: cannot parse the CSV: {e}") from e
        self.images = [p for p, _, _ in rows]
        self.captions = [c for _, c, _ in rows]
        self.lines = np.asarray([n for _, _, n in rows], dtype=np.int64)  # each row's line (the header is line 1)
        self.transform, self.tokenizer = transform, tokenizer
        log.debug("CsvDataset %s: %d rows", path, len(rows))

    def __len__(self) -> int:
        return len(self.images)

    def _resolve(self, p: str) -> Path:
        q = Path(p)
        if q.is_absolute() or q.exists():
            return q
        return self.path.parent / q

    def __getitem__(self, index: int):
        if self.images[index] is None or self.captions[index] is None:
            self.last_error = "short row (missing the image or caption column)"
            return None
        return self._pair(self._resolve(self.images[index]), self.captions[index])

    def describe_bad(self, index: int) -> str:
        """Where and why item ``index`` failed (after a failed load in this process)."""
        return f"{self.path}, line {self.lines[index]} (image {self.images[index]!r}): {self.last_error}"


class FolderDataset(_PairMixin, torch.utils.data.Dataset):
    """Images under ``root`` (recursive) each captioned by a sidecar ``<same stem>.txt``.

    Images without a caption file are left out at construction (counted in ``num_uncaptioned``).
    Items: ``(image, tokens (L,))`` or None for a corrupt image.
    """

    def __init__(self, root, transform, tokenizer):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data: image folder {str(root)!r} does not exist")
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        self.images = [p for p in files if p.with_suffix(".txt").is_file()]
        self.num_uncaptioned = len(files) - len(self.images)
        if self.num_uncaptioned:
            log.warning("%s: %d image(s) without a .txt caption left out", root, self.num_uncaptioned)
        self.transform, self.tokenizer = transform, tokenizer

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        path = self.images[index]
        try:
            caption = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            log.debug("bad caption %s: %s", path, e)
            caption = None
        return self._pair(path, caption)

    def describe_bad(self, index: int) -> str:
        """Which image failed and why (after a failed load in this process)."""
        return f"{self.images[index]}: {self.last_error}"


class ShapesPairs(torch.utils.data.Dataset):
    """``(image, tokens)`` pairs of a :class:`~clipfast.train.shapes_dataset.ShapesDataset`.

    The captions come from a few thousand distinct strings, so their tokens are cached (per process).
    """

    deterministic_items = True  # items depend on the index only: no per-sample RNG seeding needed

    def __init__(self, shapes, tokenizer):
        self.shapes, self.tokenizer = shapes, tokenizer
        self._cache: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int):
        image, caption, _ = self.shapes[index]
        tokens = self._cache.get(caption)
        if tokens is None:
            tokens = self._cache[caption] = _tokens(self.tokenizer, caption)
        return image, tokens.clone()


class SyntheticDataset(torch.utils.data.Dataset):
    """Random ``(image (3, S, S) normal, tokens (L,))`` pairs, item ``i`` seeded by ``(seed, i)``."""

    deterministic_items = True

    def __init__(self, num_samples: int, image_size: int, context_length: int, seed: int = 0, vocab_size: int = 49408):
        self.num_samples, self.image_size, self.context_length = int(num_samples), int(image_size), int(context_length)
        self.seed, self.vocab_size = int(seed), int(vocab_size)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        g = torch.Generator().manual_seed(_mix(self.seed, index))
        image = torch.randn(3, self.image_size, self.image_size, generator=g)
        tokens = torch.zeros(self.context_length, dtype=torch.long)
        n = int(torch.randint(2, self.context_length + 1, (1,), generator=g))
        tokens[:n] = torch.randint(1, self.vocab_size - 2, (n,), generator=g)
        tokens[0], tokens[n - 1] = self.vocab_size - 2, self.vocab_size - 1  # <start>, <end> (argmax pooling)
        return image, tokens


class WebDatasetPairs(torch.utils.data.IterableDataset):
    """Image-caption pairs streamed from webdataset tar shards, split by rank and worker.

    Args:
        urls: shard spec (see :func:`expand_shards`) or list of shard paths/URLs.
        transform / tokenizer: as :class:`CsvDataset`.
        num_samples: samples per epoch over all ranks (``--train-num-samples``); each reader then
            yields exactly its share of ``num_samples // (B * world_size)`` batches, cycling through
            its shards if they run out. None: one pass over the shards (evaluation).

    Reading plan (set by :func:`build_dataloader` through :meth:`configured`): reader
    ``k = rank * workers + worker`` of ``R`` takes shards ``k, k+R, ...`` of the (seed, epoch)-shuffled
    list when there are at least ``R`` shards, else every ``R``-th sample of every shard. With
    ``shuffle`` a 1000-sample buffer (seeded by seed, epoch, rank, worker) reorders samples.
    Augmentation randomness is seeded per sample, so resuming with ``skip_batches`` is exact.
    Items are ``(pair, failed loads since the previous item, an example of them)``; a bad sample is passed
    over (batches stay full) and counted by the loader; unreadable shard remains are logged, skipped
    (``warn_and_continue``-style) and counted as one failed load each. Cycling stops after a pass in which
    nothing decoded. Resuming decodes the skipped samples to find the good ones.
    ``len()`` is ``num_samples``.
    """

    def __init__(self, urls, transform, tokenizer, num_samples: Optional[int] = None, shuffle_buffer: int = 1000):
        self.urls = expand_shards(urls) if isinstance(urls, str) else [str(u) for u in urls]
        if not self.urls:
            raise ValueError(f"data: no shards in {urls!r}")
        missing = [u for u in self.urls if "://" not in u and not Path(u).is_file()]
        if missing:
            raise FileNotFoundError(f"data: {len(missing)} shard(s) do not exist, e.g. {missing[0]!r}")
        self.transform, self.tokenizer = transform, tokenizer
        self.num_samples, self.shuffle_buffer = num_samples, shuffle_buffer
        self.plan = dict(seed=0, epoch=0, rank=0, world_size=1, batch_size=1, workers=0, skip_batches=0, shuffle=False,
                         max_bad_fraction=DEFAULT_MAX_BAD_FRACTION, bad_window=DEFAULT_BAD_WINDOW)
        self._errors, self._last_error = [], ""

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("WebDatasetPairs without num_samples has no length")
        return self.num_samples

    def configured(self, **plan) -> "WebDatasetPairs":
        """A shallow copy reading with ``plan`` (seed, epoch, rank, world_size, batch_size, workers, skip_batches, shuffle)."""
        other = copy.copy(self)
        other.plan = {**self.plan, **plan}
        return other

    def _handler(self, exn: Exception) -> bool:
        log.warning("webdataset: skipping unreadable shard data: %r", exn)
        url = next((a for a in getattr(exn, "args", ()) if isinstance(a, str) and a in self.urls), "a shard")
        first = exn.args[0] if getattr(exn, "args", None) else exn
        self._errors.append(f"{url}: unreadable shard data ({type(exn).__name__}: {first})")
        return True

    def _samples(self, reader: int, readers: int, pass_index: int):
        from webdataset.tariterators import tarfile_samples

        p = self.plan
        urls = list(self.urls)
        if p["shuffle"]:
            random.Random(_mix(p["seed"], p["epoch"], pass_index)).shuffle(urls)
        by_shard = len(urls) >= readers
        mine = urls[reader::readers] if by_shard else urls
        stream = tarfile_samples(({"url": u} for u in mine), handler=self._handler)
        for i, sample in enumerate(stream):
            if by_shard or i % readers == reader:
                yield sample

    def _decode(self, sample: dict, item_seed: int):
        return _seeded_call(item_seed, self._decode_unseeded, sample)

    def _decode_unseeded(self, sample: dict):
        key = next((k for k in WDS_IMAGE_KEYS if k in sample), None)
        if key is None or "txt" not in sample:
            members = sorted(k for k in sample if not k.startswith("__"))
            missing = f"image ({'/'.join(WDS_IMAGE_KEYS)})" if key is None else "txt"
            self._last_error = f"no {missing} member (has {members})"
            return None
        image, self._last_error = _open_image(sample[key])
        if image is None:
            self._last_error = f"{key}: {self._last_error}"
            return None
        try:
            caption = sample["txt"].decode("utf-8") if isinstance(sample["txt"], bytes) else str(sample["txt"])
            return (self.transform or _to_tensor)(image), _tokens(self.tokenizer, caption)
        except Exception as e:  # noqa: BLE001
            log.debug("bad sample %s: %s", sample.get("__key__"), e)
            self._last_error = f"{type(e).__name__}: {e}"
            return None

    def _describe(self, sample: dict) -> str:
        return f"{sample.get('__url__', 'a shard')}: sample {sample.get('__key__')!r}: {self._last_error}"

    def _stream(self, reader: int, readers: int, lw: int, cycle: bool, decoded: dict):
        """Raw samples of this reader, pass after pass when ``cycle``, until a pass gives no sample, or none that
        decoded (``decoded["good"]``, counted by the caller, did not grow: all bad, cycling would never end)."""
        p = self.plan
        rng = random.Random(_mix(p["seed"], p["epoch"], p["rank"], lw))
        pass_index = 0
        while True:
            got, buffer, good_before = False, [], decoded["good"]
            for sample in self._samples(reader, readers, pass_index):
                got = True
                if not p["shuffle"] or self.shuffle_buffer <= 1:
                    yield sample
                    continue
                buffer.append(sample)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))
            rng.shuffle(buffer)
            yield from buffer
            pass_index += 1
            if not (cycle and got and decoded["good"] > good_before):
                return

    def __iter__(self):
        p = self.plan
        info = torch.utils.data.get_worker_info()
        nw, w = (info.num_workers, info.id) if info is not None else (1, 0)
        # DataLoader asks workers round-robin from worker 0; after skipping k batches the next batch
        # belongs to logical worker k % nw, so physical worker w plays logical worker (w + k) % nw.
        lw = (w + p["skip_batches"]) % nw
        reader, readers = p["rank"] * nw + lw, p["world_size"] * nw
        bs = p["batch_size"]
        skip = (p["skip_batches"] // nw + (lw < p["skip_batches"] % nw)) * bs
        quota = None
        if self.num_samples is not None:
            nb = self.num_samples // (bs * p["world_size"])
            quota = (nb // nw + (lw < nb % nw)) * bs
        # Bad samples are counted into the next good item (batches stay full). When the first `window` loads all
        # failed they are reported at once as a (None, count) item, so the loader judges (and raises) without
        # reading a whole pass of broken data first.
        flush_at = p["bad_window"] if p["max_bad_fraction"] < 1 else None
        self._errors = []  # unreadable shard data, from _handler
        decoded = {"good": 0}
        produced = bad = 0  # good samples of this reader so far (skipped ones included); failed loads
        example = None
        for raw, sample in enumerate(self._stream(reader, readers, lw, quota is not None, decoded)):
            if self._errors:
                bad, example = bad + len(self._errors), example or self._errors[0]
                self._errors.clear()
            if quota is not None and produced >= quota:
                return
            pair = self._decode(sample, _mix(p["seed"], p["epoch"], p["rank"], lw, raw))
            if pair is None:
                bad, example = bad + 1, example or self._describe(sample)
                if flush_at is not None and produced == 0 and bad >= flush_at:
                    yield None, bad, example
                    bad, example = 0, None
                continue
            produced += 1
            decoded["good"] += 1
            if produced > skip:
                yield pair, bad, example
                bad, example = 0, None
        if self._errors:
            bad, example = bad + len(self._errors), example or self._errors[0]
        if bad:
            yield None, bad, example
        if quota is not None and produced < quota:
            log.warning("webdataset reader %d/%d ran out of samples (%d of %d)", reader, readers, produced, quota)


def collate_drop_none(items: list):
    """Default collate of the items that are not None; None when every item is None."""
    kept = [it for it in items if it is not None]
    return torch.utils.data.default_collate(kept) if kept else None


def _collate_counting(items: list):
    """Items ``(pair or None, failed loads, example)`` -> ``(batch or None, total failed loads, first example)``;
    runs in the worker."""
    example = next((ex for _, _, ex in items if ex), None)
    return collate_drop_none([pair for pair, _, _ in items]), sum(bad for _, bad, _ in items), example


class _Robust(torch.utils.data.Dataset):
    """Map-style wrapper: key ``(item_seed, index)`` -> ``(pair, failed loads, example)``.

    The item is drawn with torch's and Python's RNGs seeded from ``item_seed`` (augmentation is a
    function of the key) unless ``seeded=False``. A bad item (None) is replaced by the item at an
    index drawn from ``item_seed``, up to ``max_tries`` loads; then ``(None, max_tries, example)``.
    ``example`` describes the first failed load (``dataset.describe_bad(index)`` when defined), else None.
    """

    max_tries = 20

    def __init__(self, dataset, seeded: bool = True):
        self.dataset, self.seeded = dataset, seeded

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        item_seed, index = key
        rng, example = None, None
        for attempt in range(self.max_tries):
            if self.seeded:
                pair = _seeded_call(_mix(item_seed, attempt), self.dataset.__getitem__, index)
            else:
                pair = self.dataset[index]
            if pair is not None:
                return pair, attempt, example
            if example is None:
                describe = getattr(self.dataset, "describe_bad", None)
                example = describe(index) if describe is not None else f"item {index}"
            rng = rng or random.Random(item_seed)
            index = rng.randrange(len(self.dataset))
        return None, self.max_tries, example


def _source(dataset) -> str:
    for attr in ("path", "root"):
        if getattr(dataset, attr, None) is not None:
            return str(getattr(dataset, attr))
    urls = getattr(dataset, "urls", None)
    if urls:
        return f"{urls[0]} (+{len(urls) - 1} shards)" if len(urls) > 1 else urls[0]
    return type(dataset).__name__


class Loader:
    """Iterable of ``(images, texts)`` batches over a torch DataLoader, counting bad samples.

    Each iteration raises :class:`~clipfast.train.errors.BadDataError` (naming an example bad sample) when
    more than ``max_bad_fraction`` of its first ``bad_window`` loads fail (:mod:`clipfast.train.badsamples`).

    Attributes:
        dataset: the dataset given to :func:`build_dataloader`.
        num_batches: batches this rank gets in the epoch.
        num_skipped: failed loads (missing/corrupt samples, replaced) so far in the current iteration.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, dataset, num_batches: int,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION, bad_window: int = DEFAULT_BAD_WINDOW,
                 min_rows: int = 1):
        self.loader, self.dataset, self.num_batches = loader, dataset, num_batches
        self.max_bad_fraction, self.bad_window, self.min_rows = max_bad_fraction, bad_window, min_rows
        self.num_skipped = 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        self.num_skipped = 0
        monitor = BadSampleMonitor(self.max_bad_fraction, self.bad_window, _source(self.dataset))
        for batch, dropped, example in self.loader:
            self.num_skipped += dropped
            monitor.add(len(batch[0]) if batch is not None else 0, dropped, example)
            if batch is not None and len(batch[0]) >= self.min_rows:  # (drop_last: a worker's last partial batch)
                yield tuple(batch) if isinstance(batch, list) else batch
        monitor.finish()
        if self.num_skipped:
            log.warning("skipped %d bad sample(s) of %d read (replaced), e.g. %s", self.num_skipped, monitor.loads,
                        monitor.example)


def _rank_batches(n: int, batch_size: int, order: list, rank: int, world_size: int, drop_last: bool) -> list[list[int]]:
    per_global = batch_size * world_size
    full = n // per_global
    batches = [order[i * per_global + rank * batch_size:i * per_global + (rank + 1) * batch_size] for i in range(full)]
    if not drop_last and full * per_global < n:
        rest = order[full * per_global:][rank::world_size]
        batches += [rest[i:i + batch_size] for i in range(0, len(rest), batch_size)]
    return batches


def build_dataloader(dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, workers: int = 0,
                     rank: int = 0, world_size: int = 1, drop_last: bool = True, skip_batches: int = 0,
                     pin_memory: bool = False, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
                     bad_window: int = DEFAULT_BAD_WINDOW) -> Loader:
    """A deterministic, resumable loader of ``(images (B, 3, H, W), texts (B, L))`` batches for one rank.

    Args:
        dataset: from :func:`build_dataset` (map-style or :class:`WebDatasetPairs`).
        batch_size: rows per batch on this rank (B).
        shuffle: permute per epoch (map-style) / shuffle shards and samples (webdataset).
        seed, epoch: the order is a function of (seed, epoch, rank, world_size) only.
        workers: DataLoader worker processes (0: load in this process); does not change the data.
        rank, world_size: this process's slice of each global batch of ``B * world_size`` rows.
        drop_last: drop the incomplete final global batch.
        skip_batches: start after this many of this rank's batches (exact resume).
        max_bad_fraction, bad_window: iterating raises ``BadDataError`` when more than ``max_bad_fraction`` of
            the first ``bad_window`` loads of this rank fail (``--max-bad-sample-fraction``/``--bad-sample-window``).

    Returns:
        :class:`Loader`; bad samples are replaced so batches stay full (``loader.num_skipped`` counts
        the failed loads); a batch is short only if the data has almost nothing loadable.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
    if skip_batches < 0:
        raise ValueError(f"skip_batches: expected >= 0, got {skip_batches}")
    BadSampleMonitor(max_bad_fraction, bad_window)  # validates both
    judge = dict(max_bad_fraction=max_bad_fraction, bad_window=bad_window)
    common = dict(num_workers=workers, collate_fn=_collate_counting, pin_memory=pin_memory,
                  generator=torch.Generator().manual_seed(_mix(seed, epoch, rank, 1)))
    if isinstance(dataset, torch.utils.data.IterableDataset):
        if not isinstance(dataset, WebDatasetPairs):
            raise TypeError(f"dataset: iterable datasets must be WebDatasetPairs, got {type(dataset).__name__}")
        ds = dataset.configured(seed=seed, epoch=epoch, rank=rank, world_size=world_size, batch_size=batch_size,
                                workers=workers, skip_batches=skip_batches, shuffle=shuffle, **judge)
        # drop_last is applied by the Loader, so the failed loads counted in a dropped partial batch still count
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, drop_last=False, **common)
        nb = (dataset.num_samples // (batch_size * world_size) - skip_batches) if dataset.num_samples is not None else 0
        return Loader(loader, dataset, max(nb, 0), min_rows=batch_size if drop_last else 1, **judge)
    n = len(dataset)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch))).tolist()
    else:
        order = list(range(n))
    batches = _rank_batches(n, batch_size, order, rank, world_size, drop_last)[skip_batches:]
    base = _mix(seed, epoch, 2)  # item i of the epoch is drawn under seed base ^ i
    keyed = [[(base ^ i, i) for i in b] for b in batches]
    robust = _Robust(dataset, seeded=not getattr(dataset, "deterministic_items", False))
    loader = torch.utils.data.DataLoader(robust, batch_sampler=keyed, **common)
    return Loader(loader, dataset, len(batches), **judge)


def _infer_type(data: Optional[str]) -> str:
    if data is None:
        raise ValueError("dataset_type 'auto' needs a data path")
    s = str(data)
    if s.lower().endswith((".csv", ".tsv")):
        return "csv"
    if ".tar" in s or "{" in s or "::" in s:
        return "webdataset"
    if Path(s).is_dir():
        return "folder"
    raise ValueError(f"data: cannot infer the dataset type of {s!r}; pass dataset_type csv, folder or webdataset")


def build_dataset(dataset_type, data=None, *, transform=None, tokenizer=None, split: str = "train",
                  num_samples: Optional[int] = None, csv_img_key: str = "filepath", csv_caption_key: str = "title",
                  csv_separator: str = "\t", seed: int = 0, image_size: int = 224):
    """A dataset of ``(image, token_ids)`` pairs; missing paths raise here, before any work.

    Args:
        dataset_type: ``shapes``, ``csv``, ``folder``, ``webdataset``, ``synthetic`` or ``auto`` (from
            the path: .csv/.tsv, .tar/brace/``::`` shards, or a folder).
        data: CSV path, image folder, or shard spec (unused by shapes/synthetic).
        transform: PIL image -> tensor (the model's preprocess). The shapes
            data ignores it: it draws at ``image_size`` and normalises with OpenAI mean/std itself.
        tokenizer: ``tokenizer(list[str]) -> (n, L)`` int64 (required).
        split: ``train``, ``val`` or ``heldout`` (shapes: which attribute combinations and stream).
        num_samples: shapes/synthetic length (default 10000; a quarter for non-train splits);
            webdataset samples per epoch (None: one pass, no length).
        csv_img_key, csv_caption_key, csv_separator: CSV columns and separator.
        seed: shapes/synthetic stream.
        image_size: shapes/synthetic image side.
    """
    if tokenizer is None:
        raise ValueError("tokenizer: required (a callable list[str] -> (n, L) int64 tensor)")
    if dataset_type == "auto":
        dataset_type = _infer_type(data)
    if dataset_type not in DATASET_TYPES:
        raise ValueError(f"dataset_type: expected one of {DATASET_TYPES}, got {dataset_type!r}")
    if dataset_type in ("shapes", "synthetic"):
        n = num_samples or (SHAPES_DEFAULT_SAMPLES if split == "train" else SHAPES_DEFAULT_SAMPLES // 4)
        if dataset_type == "synthetic":
            ctx = int(tokenizer(["a"]).shape[-1])
            return SyntheticDataset(n, image_size, ctx, seed=_mix(seed, {"train": 0, "val": 1}.get(split, 2)))
        return ShapesPairs(ShapesDataset(split, n, image_size, seed), tokenizer)
    if data is None:
        raise ValueError(f"data: a path is required for dataset_type {dataset_type!r}")
    if dataset_type == "csv":
        return CsvDataset(data, transform, tokenizer, csv_img_key, csv_caption_key, csv_separator)
    if dataset_type == "folder":
        return FolderDataset(data, transform, tokenizer)
    return WebDatasetPairs(data, transform, tokenizer, num_samples)
