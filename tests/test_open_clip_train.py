"""OpenCLIP 3.3's own trainer (``open_clip_train``) on clipfast, and checkpoints resumed across the two trainers.

One chain of short subprocess runs on a generated CSV dataset (8 images of 32x32, ``demo-vit``, batch 2, fp32):

1. ``open_clip_train`` with ``open_clip`` = clipfast: 1 epoch (4 steps), CSV validation, zero-shot ImageNet eval on
   a 2-class ``--imagenet-val`` folder (10 class names x 2 templates, see the launcher), checkpoint.
2. ``open_clip_train`` on clipfast again, ``--resume`` of 1's checkpoint: trains epoch 2.
3. ``python -m clipfast.train --resume`` of 1's (open_clip_train) checkpoint: clipfast's trainer continues at
   epoch 1 / step 4 and trains epoch 2.
4. the real ``open_clip_train`` (real open_clip) ``--resume`` of 3's clipfast checkpoint: trains epoch 3.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("pandas")  # open_clip_train's CSV loader (requirements-dev.txt)
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the user's CPU path, not the interpreter
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


def _run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out[-6000:]}"
    return out


def _open_clip_train(mode, args, cwd):
    return _run([sys.executable, "-m", "tests._open_clip_train_launcher", mode, "10", "2", "--", *args], cwd)


def _dataset(root):
    g = torch.Generator().manual_seed(0)
    root.mkdir()
    rows = ["filepath\ttitle"]
    for i in range(8):
        img = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        path = root / f"img{i}.png"
        Image.fromarray(img).save(path)
        rows.append(f"{path}\ta photo of thing number {i}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "val.csv").write_text("\n".join(rows[:5]) + "\n")
    for c, cls in enumerate(("n01440764", "n01443537")):  # ImageFolder classes 0 and 1 (tench, goldfish)
        (root / "imagenet" / cls).mkdir(parents=True)
        for i in range(2):
            Image.open(root / f"img{2 * c + i}.png").save(root / "imagenet" / cls / f"{i}.png")
    return root


def _common(data, logs, name, epochs):
    return ["--model", "demo-vit", "--train-data", str(data / "train.csv"), "--dataset-type", "csv",
            "--csv-separator", "\t", "--batch-size", "2", "--workers", "0", "--precision", "fp32", "--lr", "1e-3",
            "--warmup", "1", "--epochs", str(epochs), "--logs", str(logs), "--name", name, "--seed", "0"]


def _results(logs, name):
    lines = (logs / name / "checkpoints" / "results.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_open_clip_train_runs_on_clipfast_and_checkpoints_resume_across_trainers(tmp_path):
    data, logs = _dataset(tmp_path / "data"), tmp_path / "logs"

    # 1. open_clip_train on clipfast: train, val loss, zero-shot, checkpoint
    out = _open_clip_train("clipfast", _common(data, logs, "a", 1) + [
        "--val-data", str(data / "val.csv"), "--imagenet-val", str(data / "imagenet"),
        "--zeroshot-frequency", "1"], tmp_path)
    assert "LAUNCHER: open_clip is clipfast ; CLIP from clipfast.model" in out
    assert "Train Epoch: 0 [8/8 (100%)]" in out
    (metrics,) = _results(logs, "a")
    assert {"imagenet-zeroshot-val-top1", "imagenet-zeroshot-val-top5", "clip_val_loss"} <= set(metrics)
    assert 0.0 <= metrics["imagenet-zeroshot-val-top1"] <= metrics["imagenet-zeroshot-val-top5"] == 1.0  # 2 classes
    ckpt_a = logs / "a" / "checkpoints" / "epoch_1.pt"
    saved = torch.load(ckpt_a, map_location="cpu")
    assert saved["epoch"] == 1 and "step" not in saved  # open_clip_train's own format
    # parameter order equal to OpenCLIP's: the state of exp_avg entry i has the i-th named parameter's shape
    names = [n for n, p in saved["state_dict"].items()]
    assert len(saved["optimizer"]["state"]) == len([n for n in names if "num_batches" not in n])

    # 2. open_clip_train on clipfast resumes it
    out = _open_clip_train("clipfast", _common(data, logs, "b", 2) + ["--resume", str(ckpt_a)], tmp_path)
    assert f"=> resuming checkpoint '{ckpt_a}' (epoch 1)" in out
    assert "Train Epoch: 1 [8/8 (100%)]" in out and "Train Epoch: 0 " not in out
    assert torch.load(logs / "b" / "checkpoints" / "epoch_2.pt", map_location="cpu")["epoch"] == 2

    # 3. clipfast's trainer resumes the open_clip_train checkpoint
    out = _run([sys.executable, "-m", "clipfast.train", *_common(data, logs, "c", 2), "--device", "cpu",
                "--zeroshot-frequency", "0", "--no-progress", "--no-plots", "--log-every-n-steps", "1",
                "--resume", str(ckpt_a)], tmp_path)
    assert "resumed from" in out and "at epoch 1, step 4" in out
    ckpt_c = logs / "c" / "checkpoints" / "epoch_2.pt"
    state_c = torch.load(ckpt_c, map_location="cpu")
    assert (state_c["epoch"], state_c["step"]) == (2, 8)

    # 4. the real open_clip_train resumes clipfast's checkpoint
    out = _open_clip_train("open_clip", _common(data, logs, "d", 3) + ["--resume", str(ckpt_c)], tmp_path)
    assert "LAUNCHER" not in out and f"=> resuming checkpoint '{ckpt_c}' (epoch 2)" in out
    assert "Train Epoch: 2 [8/8 (100%)]" in out
    assert torch.load(logs / "d" / "checkpoints" / "epoch_3.pt", map_location="cpu")["epoch"] == 3
