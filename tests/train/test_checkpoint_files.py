"""Checkpoints: atomic writes, keep-last-k, weights_only loading, RNG round trip, signals."""
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clipfast.train import checkpoint_files as ckpt

ROOT = Path(__file__).resolve().parents[2]


def test_atomic_save_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "latest.pt"
    ckpt.atomic_save({"step": 1, "w": torch.ones(3)}, path)
    ckpt.atomic_save({"step": 2, "w": torch.zeros(3)}, path)
    assert ckpt.read_checkpoint(path)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["latest.pt"]


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "latest.pt"
    ckpt.atomic_save({"step": 1}, path)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        ckpt.atomic_save({"step": 2, "bad": lambda: None}, path)  # lambdas do not pickle
    assert ckpt.read_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_keep_last_k_sorts_numerically(tmp_path):
    for k in (1, 2, 9, 10, 11):
        (tmp_path / f"epoch_{k}.pt").write_bytes(b"x")
    (tmp_path / "latest.pt").write_bytes(b"x")
    deleted = ckpt.keep_last_k(tmp_path, 2)
    assert sorted(p.name for p in deleted) == ["epoch_1.pt", "epoch_2.pt", "epoch_9.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_10.pt", "epoch_11.pt", "latest.pt"]
    assert ckpt.keep_last_k(tmp_path, 0) == []


def test_load_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": Path("x")}, path)  # an arbitrary class: refused by weights_only
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        ckpt.read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ckpt.read_checkpoint(tmp_path / "missing.pt")


def test_find_resume(tmp_path):
    assert ckpt.find_resume(None, tmp_path) == (None, None)
    assert ckpt.find_resume("latest", tmp_path) == (None, None)  # nothing yet: start fresh
    ckpt.atomic_save({"epoch": 1, "step": 4, "state_dict": {}}, tmp_path / "latest.pt")
    path, state = ckpt.find_resume("latest", tmp_path)
    assert path == tmp_path / "latest.pt" and state["step"] == 4
    with pytest.raises(FileNotFoundError, match="--resume"):
        ckpt.find_resume(str(tmp_path / "nope.pt"), tmp_path)
    (tmp_path / "latest.pt").write_bytes(b"x")  # the only checkpoint does not load: refuse, do not start over
    with pytest.raises(ckpt.CheckpointError, match="latest.pt"):
        ckpt.find_resume("latest", tmp_path)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    state = ckpt.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.atomic_save({"rng": state}, tmp_path / "r.pt")
    torch.rand(5), np.random.rand(5), random.random()
    ckpt.set_rng_state(ckpt.read_checkpoint(tmp_path / "r.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_stop_signal_sets_a_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with ckpt.StopSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_saves_a_loadable_checkpoint_and_exits_cleanly(tmp_path):
    """``clipfast train`` in a subprocess; SIGTERM after the first step's log line -> latest.pt, exit 143."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "clipfast.train", "--model", "tiny-vit", "--force-context-length", "16",
           "--train-num-samples", "64", "--batch-size", "16", "--epochs", "1000", "--workers", "0", "--no-progress",
           "--log-every-n-steps", "1", "--zeroshot-frequency", "0", "--logs", str(tmp_path), "--name", "run"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stderr:  # log lines
            seen.append(line)
            if " step 1/" in line:
                break
        assert seen and " step 1/" in seen[-1], "".join(seen)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "SIGTERM" in err
    state = ckpt.read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert state["step"] >= 1 and state["epoch"] * 4 + state["batch_in_epoch"] == state["step"]
    assert "visual.conv1.weight" in state["state_dict"] and state["optimizer"]["state"]
    assert state["args"]["batch_size"] == 16
