"""Data that is mostly bad stops the run with an error naming a bad sample; an epoch of 0 steps is an error."""
import json

import pytest

from clipfast.train import data as D
from clipfast.train.cli import main
from clipfast.train.errors import BadDataError, RunError
from clipfast.train.trainer import TrainData, Trainer
from tests.train._train_utils import clip_loss, tiny_clip, train_args
from tests.train.test_data import _image_bytes, _shards, _write_images, _write_shard, tokenizer, transform


def _csv(tmp_path, n_good, n_missing, header="filepath\ttitle", short=0):
    paths = _write_images(tmp_path, n_good)
    rows = [f"{p.name}\tc{i}" for i, p in enumerate(paths)] + [f"gone{i}.png\tm{i}" for i in range(n_missing)]
    if header.startswith("title"):
        rows = ["\t".join(r.split("\t")[::-1]) for r in rows]
    rows += [f"short{i}" for i in range(short)]
    (tmp_path / "d.csv").write_text("\n".join([header] + rows) + "\n")
    return D.build_dataset("csv", str(tmp_path / "d.csv"), transform=transform, tokenizer=tokenizer)


def test_csv_of_missing_images_raises_naming_file_and_row(tmp_path):
    ds = _csv(tmp_path, 0, 8)
    with pytest.raises(BadDataError, match=r"(?s)d\.csv.*line \d.*gone\d\.png"):
        list(D.build_dataloader(ds, 4, shuffle=True, drop_last=True))


@pytest.mark.parametrize("fraction, fails", [(0.5, False), (0.05, True)])
def test_threshold_is_configurable(tmp_path, fraction, fails):
    ds = _csv(tmp_path, 12, 4)  # a quarter of the rows missing
    loader = D.build_dataloader(ds, 4, shuffle=True, drop_last=True, max_bad_fraction=fraction, bad_window=8)
    if fails:
        with pytest.raises(BadDataError, match=r"more than 5%"):
            list(loader)
    else:
        assert sum(len(b[0]) for b in loader) == 16 and loader.num_skipped > 0


def test_short_rows_are_bad_samples_not_a_crash(tmp_path):
    ds = _csv(tmp_path, 0, 0, header="title\tfilepath", short=6)  # image column missing from every row
    with pytest.raises(BadDataError, match=r"(?s)line \d.*short row"):
        list(D.build_dataloader(ds, 2, shuffle=False, drop_last=True))


def test_webdataset_of_corrupt_images_raises_naming_the_member(tmp_path):
    spec = _shards(tmp_path, n_shards=2, per_shard=4, bad=tuple((s, j) for s in range(2) for j in range(4)))
    ds = D.build_dataset("webdataset", spec, transform=transform, tokenizer=tokenizer, num_samples=8)
    with pytest.raises(BadDataError, match=r"(?s)shard-\d\.tar.*s\d_00\d"):  # also: no endless cycling
        list(D.build_dataloader(ds, 2, shuffle=False, workers=0))


def test_webdataset_of_unreadable_shards_raises_naming_a_shard(tmp_path):
    for s in range(2):
        (tmp_path / f"shard-{s}.tar").write_bytes(b"this is not a tar file" * 10)
    ds = D.build_dataset("webdataset", str(tmp_path / "shard-{0..1}.tar"), transform=transform, tokenizer=tokenizer,
                         num_samples=8)
    with pytest.raises(BadDataError, match=r"shard-\d\.tar"):
        list(D.build_dataloader(ds, 2, shuffle=False, workers=0))


def test_webdataset_member_without_caption_is_named(tmp_path):
    _write_shard(tmp_path / "only.tar", [(f"k{i}", {"png": _image_bytes(i)}) for i in range(4)])
    ds = D.build_dataset("webdataset", str(tmp_path / "only.tar"), transform=transform, tokenizer=tokenizer)
    with pytest.raises(BadDataError, match=r"(?s)only\.tar.*k0.*txt"):
        list(D.build_dataloader(ds, 2, shuffle=False, workers=0, drop_last=False))


def test_an_epoch_without_steps_is_an_error_and_saves_nothing(tmp_path):
    data = TrainData(lambda epoch, skip: iter(()), 4, 8)  # e.g. every sample bad, threshold at 1
    trainer = Trainer(train_args(epochs=1), tiny_clip(), clip_loss(), data, run_dir=tmp_path)
    with pytest.raises(RunError, match="0 of 4 steps"):
        trainer.fit()
    assert not (tmp_path / "checkpoints").exists()


def test_cli_run_on_bad_data_exits_nonzero_without_checkpoints(tmp_path, capsys):
    (tmp_path / "d.csv").write_text("filepath\ttitle\n" + "".join(f"gone{i}.png\tc{i}\n" for i in range(32)))
    argv = ["train", "--model", "tiny-vit", "--dataset-type", "csv", "--train-data", str(tmp_path / "d.csv"),
            "--batch-size", "8", "--epochs", "1", "--workers", "0", "--force-context-length", "16", "--logs",
            str(tmp_path / "logs"), "--name", "run", "--no-progress", "--zeroshot-frequency", "0"]
    assert main(argv) == 1
    assert "gone" in capsys.readouterr().err
    assert not list((tmp_path / "logs" / "run").glob("checkpoints/*.pt"))
    # with the threshold off, the loader yields nothing and the trainer refuses the empty epoch
    assert main(argv + ["--max-bad-sample-fraction", "1", "--name", "run2"]) == 1
    assert "0 of 4 steps" in capsys.readouterr().err
    assert not list((tmp_path / "logs" / "run2").glob("checkpoints/*.pt"))
    assert json.loads((tmp_path / "logs" / "run2" / "args.json").read_text())["max_bad_sample_fraction"] == 1.0


def _wds_argv(tmp_path, command, spec, *extra):
    return [command, "--model", "tiny-vit", "--force-context-length", "16", "--dataset-type", "webdataset",
            "--batch-size", "4", "--workers", "0", *extra] + (
        ["--train-data", spec, "--train-num-samples", "8", "--epochs", "1", "--logs", str(tmp_path / "logs"),
         "--name", "run", "--no-progress", "--zeroshot-frequency", "0"] if command == "train" else ["--val-data", spec])


def test_cli_webdataset_of_bad_shards_exits_nonzero_without_checkpoints(tmp_path, capsys):
    for s in range(2):
        (tmp_path / f"shard-{s}.tar").write_bytes(b"this is not a tar file" * 10)
    assert main(_wds_argv(tmp_path, "train", str(tmp_path / "shard-{0..1}.tar"))) == 1
    assert "shard-" in capsys.readouterr().err
    assert not list((tmp_path / "logs" / "run").glob("checkpoints/*.pt"))


def test_cli_eval_on_webdataset_val_data_with_a_corrupt_member(tmp_path, capsys):
    spec = _shards(tmp_path, n_shards=2, per_shard=4, bad=((0, 1),))
    assert main(_wds_argv(tmp_path, "eval", spec)) == 0  # was a TypeError/AttributeError in collate
    metrics = json.loads(capsys.readouterr().out)
    assert metrics and all(0.0 <= v <= 1.0 for k, v in metrics.items() if "R@" in k or "top" in k), metrics
