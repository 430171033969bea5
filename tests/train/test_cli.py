"""``clipfast train`` / ``eval`` command line: complete --help, config files, errors before any work."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clipfast.train.cli import main, parse_args

ROOT = Path(__file__).resolve().parents[2]
OPENCLIP_FLAGS = ("--model", "--pretrained", "--batch-size", "--epochs", "--lr", "--wd", "--beta1", "--beta2", "--eps",
                  "--warmup", "--precision", "--grad-checkpointing", "--local-loss", "--gather-with-grad", "--accum-freq",
                  "--grad-clip-norm", "--torchcompile", "--resume", "--dataset-type", "--train-data", "--val-data",
                  "--zeroshot-frequency", "--save-frequency", "--logs", "--name", "--seed", "--workers", "--config")


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    missing = [f for f in OPENCLIP_FLAGS if f not in text]
    assert not missing, missing


def test_module_entry_point_is_clipfast_train():
    proc = subprocess.run([sys.executable, "-m", "clipfast.train", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "--accum-freq" in proc.stdout and "usage: clipfast train" in proc.stdout


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_sets_defaults_and_flags_override(tmp_path, suffix):
    cfg = {"batch-size": 7, "lr": 0.01, "grad_clip_norm": 2.0, "local-loss": True}
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(cfg))
    else:
        path.write_text("".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in cfg.items()))
    args = parse_args(["train", "--config", str(path), "--lr", "0.5"])
    assert (args.batch_size, args.lr, args.grad_clip_norm, args.local_loss) == (7, 0.5, 2.0, True)


def test_config_file_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"batch-size": 8, "learning-rate": 1}))
    with pytest.raises(SystemExit) as exc:
        parse_args(["train", "--config", str(bad)])
    assert exc.value.code == 2 and "learning_rate" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(tmp_path / "none.yaml")])
    assert exc.value.code == 2 and "none.yaml" in capsys.readouterr().err


def test_unknown_model_lists_the_choices(tmp_path, capsys):
    assert main(["train", "--model", "ViT-Q-99", "--logs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ViT-Q-99" in err and "tiny-vit" in err and "ViT-B-32" in err
    assert not any(tmp_path.iterdir())  # no work done


@pytest.mark.parametrize("argv, flag", [
    (["--dataset-type", "csv", "--train-data", "/no/such/train.csv"], "--train-data"),
    (["--dataset-type", "csv"], "--train-data"),
    (["--dataset-type", "webdataset", "--train-data", "/no/such/{000..003}.tar", "--train-num-samples", "10"], "--train-data"),
    (["--val-data", "/no/such/val.csv", "--dataset-type", "csv", "--train-data", __file__], "--val-data"),
    (["--pretrained", "/no/such/ckpt.pt"], "--pretrained"),
])
def test_missing_paths_and_bad_values_fail_before_any_work(tmp_path, capsys, argv, flag):
    assert main(["train", "--model", "tiny-vit", "--logs", str(tmp_path)] + argv) == 2
    err = capsys.readouterr().err
    assert flag in err, err
    assert not any(tmp_path.iterdir())


def test_list_models(capsys):
    assert main(["train", "--list-models"]) == 0
    assert "tiny-vit" in capsys.readouterr().out.split()


def _tiny_run(logs, *extra):
    return ["train", "--model", "tiny-vit", "--dataset-type", "shapes", "--train-num-samples", "64", "--val-num-samples",
            "32", "--batch-size", "16", "--warmup", "2", "--force-context-length", "16", "--workers", "0",
            "--logs", str(logs), "--name", "run", "--log-every-n-steps", "1", "--no-progress", *extra]


def test_train_writes_checkpoints_metrics_plots_then_resumes_and_evaluates(tmp_path, capsys):
    assert main(_tiny_run(tmp_path, "--epochs", "2", "--zeroshot-frequency", "2", "--keep-last", "1")) == 0
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_2.pt", "latest.pt"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert {"train/lr", "train/samples_per_second"} <= set(train[0])
    assert any("val/zeroshot_top1" in r for r in records)
    assert {p.name for p in (run / "plots").glob("*.png")} >= {"loss.png", "lr.png"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["interrupted"] is None and "val/zeroshot_top1" in summary
    assert json.loads((run / "args.json").read_text())["batch_size"] == 16
    # an existing run is not overwritten by accident
    assert main(_tiny_run(tmp_path, "--epochs", "3")) == 2
    # resume the same run for one more epoch
    assert main(_tiny_run(tmp_path, "--epochs", "3", "--zeroshot-frequency", "0", "--resume", "latest")) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 12
    capsys.readouterr()
    # evaluate the checkpoint
    assert main(["eval", "--model", "tiny-vit", "--force-context-length", "16", "--pretrained",
                 str(run / "checkpoints" / "latest.pt"), "--val-num-samples", "32", "--workers", "0"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["zeroshot_top1"] <= 1.0
