"""Data formats (csv, folder, webdataset, shapes, synthetic) with corrupt files, and the loader's order."""
import io
import tarfile

import pytest
import torch
from PIL import Image

from clipfast.train import data as D

CTX = 12


def tokenizer(texts):
    """A stand-in tokenizer: character codes, (n, CTX) int64."""
    out = torch.zeros(len(texts), CTX, dtype=torch.long)
    for i, t in enumerate(texts):
        codes = [ord(c) % 1000 for c in t[:CTX]]
        out[i, :len(codes)] = torch.tensor(codes)
    return out


def transform(image):
    return torch.from_numpy(__import__("numpy").asarray(image.resize((8, 8)), dtype="float32")).permute(2, 0, 1) / 255


def _image_bytes(i, fmt="PNG"):
    buf = io.BytesIO()
    Image.new("RGB", (10 + i, 12), (20 * i % 256, 100, 50)).save(buf, fmt)
    return buf.getvalue()


def _write_images(folder, n, bad=(), fmt="png"):
    """n images; those in ``bad`` are garbage (index 0 of bad) or truncated (the others)."""
    paths = []
    for i in range(n):
        p = folder / f"img{i}.{fmt}"
        data = _image_bytes(i, "JPEG" if fmt == "jpg" else "PNG")
        if i in bad:
            data = b"not an image" if i == min(bad) else data[: len(data) // 3]
        p.write_bytes(data)
        paths.append(p)
    return paths


def _drain(loader):
    batches = list(loader)
    return batches, sum(len(b[0]) for b in batches)


def test_csv_with_corrupt_and_missing_images(tmp_path):
    paths = _write_images(tmp_path, 6, bad=(1, 4))
    rows = ["filepath\ttitle"] + [f"{p.name}\tcaption {i}" for i, p in enumerate(paths)] + ["missing.png\tgone"]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    ds = D.build_dataset("csv", str(tmp_path / "train.csv"), transform=transform, tokenizer=tokenizer)
    assert len(ds) == 7
    loader = D.build_dataloader(ds, 7, shuffle=False, drop_last=False)
    (batch,), n = _drain(loader)
    assert n == 7 and loader.num_skipped >= 3  # bad ones replaced by good ones: the batch stays full
    images, texts = batch
    assert images.shape == (7, 3, 8, 8) and texts.shape == (7, CTX) and texts.dtype == torch.long
    digits = texts[:, 8].tolist()  # "caption i"[8] is the digit
    assert [digits[i] for i in (0, 2, 3, 5)] == [ord(str(i)) for i in (0, 2, 3, 5)]
    assert set(digits) <= {ord(str(i)) for i in (0, 2, 3, 5)}
    again, _ = _drain(D.build_dataloader(ds, 7, shuffle=False, drop_last=False))
    assert torch.equal(again[0][1], texts)  # replacements are deterministic


def test_csv_custom_keys_separator_and_errors(tmp_path):
    _write_images(tmp_path, 2)
    (tmp_path / "d.csv").write_text("path,text\nimg0.png,zero\nimg1.png,one\n")
    ds = D.build_dataset("auto", str(tmp_path / "d.csv"), transform=transform, tokenizer=tokenizer,
                         csv_img_key="path", csv_caption_key="text", csv_separator=",")
    assert isinstance(ds, D.CsvDataset) and ds[1][1][0] == ord("o")
    with pytest.raises(ValueError, match="csv_caption_key"):
        D.build_dataset("csv", str(tmp_path / "d.csv"), tokenizer=tokenizer, csv_img_key="path", csv_separator=",")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.build_dataset("csv", str(tmp_path / "nope.csv"), tokenizer=tokenizer)


def test_folder_with_corrupt_image_and_missing_caption(tmp_path):
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    paths = _write_images(tmp_path, 3, bad=(2,), fmt="jpg") + _write_images(sub, 2)
    for i, p in enumerate(paths[:-1]):  # the last image has no caption
        p.with_suffix(".txt").write_text(f"caption {i}\n")
    ds = D.build_dataset("folder", str(tmp_path), transform=transform, tokenizer=tokenizer)
    assert len(ds) == 4 and ds.num_uncaptioned == 1
    loader = D.build_dataloader(ds, 2, shuffle=True, seed=1, drop_last=False, workers=0)
    _, n = _drain(loader)
    assert n == 4 and loader.num_skipped >= 1
    with pytest.raises(FileNotFoundError, match="folder"):
        D.build_dataset("folder", str(tmp_path / "nope"), tokenizer=tokenizer)


def _write_shard(path, items):
    """items: (key, {ext: bytes}); the tar is written with the tarfile module."""
    with tarfile.open(path, "w") as tf:
        for key, files in items:
            for ext, payload in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))


def _shards(tmp_path, n_shards=3, per_shard=4, bad=((0, 1), (2, 3))):
    for s in range(n_shards):
        items = []
        for j in range(per_shard):
            img = b"\x89PNG garbage" if (s, j) in bad else _image_bytes(s * per_shard + j)
            items.append((f"s{s}_{j:03d}", {"png": img, "txt": f"s{s}i{j}".encode()}))
        _write_shard(tmp_path / f"shard-{s}.tar", items)
    return str(tmp_path / ("shard-{0..%d}.tar" % (n_shards - 1)))


def test_webdataset_one_pass_with_corrupt_samples_and_truncated_shard(tmp_path):
    spec = _shards(tmp_path)
    raw = (tmp_path / "shard-1.tar").read_bytes()
    (tmp_path / "shard-1.tar").write_bytes(raw[: len(raw) // 2])  # truncated mid-shard
    ds = D.build_dataset("webdataset", spec, transform=transform, tokenizer=tokenizer)
    loader = D.build_dataloader(ds, 3, shuffle=False, drop_last=False, workers=0)
    batches, n = _drain(loader)
    assert 6 <= n < 10 and loader.num_skipped >= 2  # 2 garbage images, the truncated shard loses some
    assert all(b[0].shape == (3, 3, 8, 8) for b in batches[:-1])  # bad samples passed over: full batches
    texts = {bytes(t[:4].tolist()) for b in batches for t in b[1]}
    assert b"s0i0" in texts and not texts & {b"s0i1", b"s2i3"}  # the garbage images are never served


@pytest.mark.parametrize("workers", [0, 2])
def test_webdataset_epoch_quota_ranks_and_resume(tmp_path, workers):
    spec = _shards(tmp_path, n_shards=4, per_shard=6, bad=())
    noisy = lambda image: transform(image) + torch.rand(1)  # noqa: E731 - augmentation stand-in
    ds = D.build_dataset("webdataset", spec, transform=noisy, tokenizer=tokenizer, num_samples=20)
    assert len(ds) == 20

    def read(rank, skip=0, epoch=0):
        loader = D.build_dataloader(ds, 2, shuffle=True, seed=5, epoch=epoch, workers=workers, rank=rank,
                                    world_size=2, skip_batches=skip)
        pairs = [(im, tuple(t.tolist())) for ims, tx in loader for im, t in zip(ims, tx)]
        return [t for _, t in pairs], torch.stack([im for im, _ in pairs])

    (r0, im0), (r1, _) = read(0), read(1)
    assert len(r0) == len(r1) == 10  # 20 // (2 * 2) = 5 batches of 2 per rank
    assert not set(r0) & set(r1)  # ranks read different shards
    assert read(0)[0] == r0  # deterministic
    r0_resumed, im0_resumed = read(0, skip=3)
    assert r0_resumed == r0[6:] and torch.equal(im0_resumed, im0[6:])  # exact resume, augmentation included
    assert read(0, epoch=1)[0] != r0


def test_webdataset_missing_shard_raises_before_work(tmp_path):
    _shards(tmp_path, n_shards=1)
    with pytest.raises(FileNotFoundError, match="shard"):
        D.build_dataset("webdataset", str(tmp_path / "shard-{0..1}.tar"), tokenizer=tokenizer)
    assert D.expand_shards("a/{0..2}.tar::b.tar") == ["a/0.tar", "a/1.tar", "a/2.tar", "b.tar"]


def test_shapes_loader_order_ranks_resume_and_workers():
    ds = D.build_dataset("shapes", None, tokenizer=tokenizer, num_samples=48, image_size=16, seed=0)
    assert len(ds) == 48

    def batches(**kw):
        args = dict(shuffle=True, seed=0, epoch=0, workers=0)
        args.update(kw)
        return [(im, tx) for im, tx in D.build_dataloader(ds, 4, **args)]

    full = batches()
    assert len(full) == 12 and full[0][0].shape == (4, 3, 16, 16) and full[0][1].shape == (4, CTX)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[5:], batches(skip_batches=5)))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, batches(workers=2)))
    assert not torch.equal(full[0][0], batches(epoch=1)[0][0])
    # rank r takes the r-th slice of each global batch: together the ranks cover the epoch once
    r0, r1 = batches(rank=0, world_size=2), batches(rank=1, world_size=2)
    assert len(r0) == len(r1) == 6
    both = torch.cat([torch.cat([a[0], b[0]]) for a, b in zip(r0, r1)])
    assert torch.equal(both, torch.cat([b[0] for b in full]))
    assert len(D.build_dataloader(ds, 5, shuffle=False, drop_last=False)) == 10


def test_augmentation_seeded_per_sample(tmp_path):
    paths = _write_images(tmp_path, 4)
    (tmp_path / "d.csv").write_text("filepath\ttitle\n" + "".join(f"{p}\tc{i}\n" for i, p in enumerate(paths)))

    def noisy(image):
        return transform(image) + torch.rand(1)

    ds = D.build_dataset("csv", str(tmp_path / "d.csv"), transform=noisy, tokenizer=tokenizer)
    a = [im for im, _ in D.build_dataloader(ds, 1, shuffle=True, seed=0, epoch=0)]
    b = [im for im, _ in D.build_dataloader(ds, 1, shuffle=True, seed=0, epoch=0, skip_batches=2)]
    assert torch.equal(torch.cat(a[2:]), torch.cat(b))


def test_synthetic_and_shapes_lengths():
    ds = D.build_dataset("synthetic", None, tokenizer=tokenizer, split="train", num_samples=10, image_size=16)
    assert len(ds) == 10
    im, tx = ds[3]
    assert im.shape == (3, 16, 16) and tx.shape == (CTX,) and torch.equal(ds[3][0], im)
    assert len(D.build_dataset("shapes", None, tokenizer=tokenizer, split="val", image_size=16)) == 2500


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dataset_type="parquet", data="x"), ValueError, "dataset_type"),
    (dict(dataset_type="csv", data=None), ValueError, "data"),
    (dict(dataset_type="auto", data="weird.bin"), ValueError, "infer"),
])
def test_build_dataset_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        D.build_dataset(kwargs.pop("dataset_type"), kwargs.pop("data"), tokenizer=tokenizer)


def test_build_dataloader_errors():
    ds = D.build_dataset("synthetic", None, tokenizer=tokenizer, num_samples=4, image_size=8)
    with pytest.raises(ValueError, match="batch_size"):
        D.build_dataloader(ds, 0, shuffle=False)
    with pytest.raises(ValueError, match="rank"):
        D.build_dataloader(ds, 2, shuffle=False, rank=2, world_size=2)


def test_loading_leaves_global_rngs_alone(tmp_path):
    import random

    paths = _write_images(tmp_path, 3)
    (tmp_path / "d.csv").write_text("filepath\ttitle\n" + "".join(f"{p}\tc{i}\n" for i, p in enumerate(paths)))
    ds = D.build_dataset("csv", str(tmp_path / "d.csv"), transform=lambda im: transform(im) + random.random(),
                         tokenizer=tokenizer)
    torch.manual_seed(3)
    random.seed(3)
    list(D.build_dataloader(ds, 2, shuffle=True, seed=0, drop_last=False))
    a, b = torch.rand(1), random.random()
    torch.manual_seed(3)
    random.seed(3)
    assert torch.equal(a, torch.rand(1)) and b == random.random()


@pytest.mark.parametrize("fmt", ["csv", "webdataset"])
def test_ranks_get_full_batches_despite_bad_samples(tmp_path, fmt):
    """Data-parallel ranks all-gather features: every rank's batch must keep B rows."""
    if fmt == "csv":
        paths = _write_images(tmp_path, 16, bad=(0, 5, 6, 11))
        (tmp_path / "d.csv").write_text("filepath\ttitle\n" + "".join(f"{p}\tc{i}\n" for i, p in enumerate(paths)))
        ds = D.build_dataset("csv", str(tmp_path / "d.csv"), transform=transform, tokenizer=tokenizer)
    else:
        spec = _shards(tmp_path, n_shards=4, per_shard=6, bad=((0, 0), (1, 2), (1, 3), (3, 5)))
        ds = D.build_dataset("webdataset", spec, transform=transform, tokenizer=tokenizer, num_samples=16)
    for rank in (0, 1):
        loader = D.build_dataloader(ds, 4, shuffle=True, seed=0, rank=rank, world_size=2, workers=0)
        sizes = [len(im) for im, _ in loader]
        assert sizes == [4, 4], (rank, sizes)
