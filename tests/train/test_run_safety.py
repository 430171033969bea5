"""Runs that cannot silently lose work: resume fallback, run-folder guard and lock, torn metrics,
stale temporaries, checkpoint errors that name the file, batch/world size recorded and checked."""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from clipfast.train import checkpoint_files as ckpt
from clipfast.train.cli import main
from clipfast.train.errors import CheckpointError, RunLockedError, RunRefused
from clipfast.train.trainer import Trainer, _truncate_jsonl
from tests.train._train_utils import RandomPairs, clip_loss, tiny_clip, train_args


def _trainer(run_dir=None, batch_size=8, **kw):
    torch.manual_seed(0)
    return Trainer(train_args(**kw), tiny_clip(), clip_loss(), RandomPairs(32).train_data(batch_size), run_dir=run_dir)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A real trainer checkpoint (1 epoch of 4 steps at batch 8)."""
    run = tmp_path_factory.mktemp("saved")
    _trainer(run, epochs=1).fit()
    return run / "checkpoints" / "epoch_1.pt"


# ---- checkpoint files ---------------------------------------------------------------------------------
def test_empty_and_truncated_checkpoints_name_the_file(tmp_path, saved):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt.*empty"):
        ckpt.read_checkpoint(empty)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(saved.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="torn.pt"):
        ckpt.read_checkpoint(torn)


def test_pretrained_state_dict_loader_names_an_empty_file(tmp_path):
    from clipfast.checkpoint import load_state_dict

    empty = tmp_path / "w.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="w.pt.*empty"):
        load_state_dict(empty)


def test_resume_of_a_plain_weights_file_says_so(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny_clip().state_dict(), path)
    with pytest.raises(CheckpointError, match="(?s)plain weights.*--pretrained"):
        _trainer().resume(path)


def test_checkpoint_records_batch_world_and_accum_and_resume_refuses_others(saved, tmp_path):
    state = ckpt.read_checkpoint(saved)
    assert (state["batch_size"], state["world_size"], state["accum_freq"]) == (8, 1, 1)
    with pytest.raises(CheckpointError, match="batch_size=8.*4"):
        _trainer(batch_size=4).resume(saved)
    with pytest.raises(CheckpointError, match="accum_freq"):
        _trainer(batch_size=4, accum_freq=2).resume(saved)
    old = {k: v for k, v in state.items() if k not in ("batch_size", "world_size", "accum_freq")}
    torch.save(old, tmp_path / "old.pt")  # written before these fields existed: allowed
    t = _trainer(batch_size=4)
    t.resume(tmp_path / "old.pt")
    assert t.epoch == 1
    t = _trainer()
    t.resume(saved, state=state)  # the state found by find_resume is used as is: loaded once
    assert (t.epoch, t.step) == (1, 4)


# ---- --resume latest -----------------------------------------------------------------------------------
def test_resume_latest_falls_back_to_the_newest_loadable_checkpoint(tmp_path, saved, caplog):
    d = tmp_path / "checkpoints"
    d.mkdir()
    assert ckpt.find_resume(None, d) == (None, None)
    assert ckpt.find_resume("latest", d) == (None, None)  # nothing yet: a fresh start
    for k in (1, 2, 10):
        state = ckpt.read_checkpoint(saved)
        state["epoch"] = k
        torch.save(state, d / f"epoch_{k}.pt")
    path, state = ckpt.find_resume("latest", d)  # latest.pt missing
    assert path == d / "epoch_10.pt" and state["epoch"] == 10
    (d / "latest.pt").write_bytes(b"")  # corrupt latest.pt and newest epoch file
    (d / "epoch_10.pt").write_bytes(b"\x80garbage")
    with caplog.at_level(logging.WARNING):
        path, state = ckpt.find_resume("latest", d)
    assert path == d / "epoch_2.pt" and state["epoch"] == 2
    assert "latest.pt" in caplog.text and "epoch_10.pt" in caplog.text
    for k in (1, 2):
        (d / f"epoch_{k}.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="(?s)none of the 4 checkpoint"):
        ckpt.find_resume("latest", d)
    with pytest.raises(FileNotFoundError, match="--resume"):
        ckpt.find_resume(str(tmp_path / "nope.pt"), d)


def _tiny_run(logs, *extra, name="run"):
    return ["train", "--model", "tiny-vit", "--dataset-type", "shapes", "--train-num-samples", "32", "--batch-size",
            "16", "--warmup", "1", "--force-context-length", "16", "--workers", "0", "--logs", str(logs), "--name", name,
            "--no-progress", "--no-plots", "--zeroshot-frequency", "0", "--epochs", "1", *extra]


def test_cli_resume_latest_without_latest_pt_continues_and_keeps_checkpoints(tmp_path, capsys):
    assert main(_tiny_run(tmp_path, "--epochs", "2")) == 0
    d = tmp_path / "run" / "checkpoints"
    (d / "latest.pt").unlink()
    before = (d / "epoch_2.pt").read_bytes()
    epoch1 = (d / "epoch_1.pt").read_bytes()
    assert main(_tiny_run(tmp_path, "--epochs", "3", "--resume", "latest")) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 6  # continued from step 4
    assert (d / "epoch_2.pt").read_bytes() == before and (d / "epoch_1.pt").read_bytes() == epoch1
    assert (d / "epoch_3.pt").is_file()


def test_existing_run_folder_is_not_overwritten_without_resume(tmp_path, capsys, saved):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert main(_tiny_run(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl" in err and "--resume latest" in err and "--name" in err
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
    # resuming from a file of another run into this folder would overwrite its history too
    assert main(_tiny_run(tmp_path, "--resume", str(saved))) == 2
    assert "--resume latest" in capsys.readouterr().err


def test_refused_resume_writes_nothing_into_the_run(tmp_path, capsys):
    """A resume refused for another --batch-size is refused before args.json (or anything) is rewritten."""
    assert main(_tiny_run(tmp_path)) == 0
    run = tmp_path / "run"
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(_tiny_run(tmp_path, "--resume", "latest", "--batch-size", "8")) == 1
    assert "batch_size=16" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == files


def test_resume_latest_with_only_other_checkpoint_files_refuses(tmp_path, capsys):
    """``best.pt`` + metrics but no latest/epoch file: not "nothing saved" — refuse rather than wipe the metrics."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"x")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert main(_tiny_run(tmp_path, "--resume", "latest")) == 2
    assert "best.pt" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


# ---- run-folder lock -----------------------------------------------------------------------------------
def test_lock_on_a_file_system_without_flock_is_a_clear_refusal(tmp_path, monkeypatch):
    import errno

    from clipfast.train import runlock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(runlock.fcntl, "flock", no_locks)
    with pytest.raises(RunRefused, match="(?s)cannot lock.*flock") as exc:
        runlock.RunLock(tmp_path / "run").acquire()
    assert not isinstance(exc.value, RunLockedError)  # not "in use by another process"


def test_lock_refuses_a_second_writer_names_the_holder_and_is_released(tmp_path):
    from clipfast.train.runlock import RunLock

    with RunLock(tmp_path / "run") as lock:
        info = json.loads(lock.path.read_text())
        assert info["pid"] == os.getpid() and info["host"]
        with pytest.raises(RunLockedError, match=f"(?s)pid {os.getpid()}.*--name"):
            RunLock(tmp_path / "run").acquire()
    assert (tmp_path / "run" / ".lock").read_text() == ""  # released: emptied, not locked
    RunLock(tmp_path / "run").acquire().release()


def test_lock_held_by_another_process_refuses_the_cli_run(tmp_path, capsys):
    code = ("import sys, time; from clipfast.train.runlock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert main(_tiny_run(tmp_path, "--resume", "latest")) == 2
        err = capsys.readouterr().err
        assert f"pid {proc.pid}" in err and "in use" in err
        assert not (tmp_path / "run" / "checkpoints").exists()
    finally:
        proc.kill()
        proc.wait()
    # the holder died without releasing: its lock file is stale and is taken over
    from clipfast.train.runlock import RunLock

    with RunLock(tmp_path / "run") as lock:
        assert lock.stale_holder is not None and lock.stale_holder["pid"] == proc.pid


# ---- metrics and temporaries ---------------------------------------------------------------------------
def test_torn_last_metrics_line_is_trimmed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "train/lo')  # killed mid-write
    _truncate_jsonl(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_resume_with_a_torn_metrics_line(tmp_path, saved):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(f'{{"step": {s}}}\n' for s in range(1, 6)) + '{"step": 6, "tr')
    t = _trainer(run, epochs=1)
    t.resume(saved)
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_stale_checkpoint_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"latest.pt.tmp-{dead_pid}"
    live = tmp_path / f"epoch_1.pt.tmp-{os.getppid()}"
    for p in (stale, live, tmp_path / "latest.pt"):
        p.write_bytes(b"x")
    assert ckpt.remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["latest.pt", live.name])
    # a killed metrics rewrite (trainer._truncate_jsonl) leaves metrics.jsonl.tmp-<pid> in the run folder
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torn = run / f"metrics.jsonl.tmp-{dead_pid}"
    torn.write_text('{"step": 1}\n')
    assert main(_tiny_run(tmp_path, "--resume", "latest")) == 0
    assert not torn.exists()


def test_errors_are_runerrors_with_exit_status():
    assert RunRefused.exit_status == 2 and issubclass(RunLockedError, RunRefused)


# ---- under torchrun: rank 0 decides, every rank follows ----------------------------------------------
def _torchrun(cwd, *extra, nproc=2):
    """``torchrun -m clipfast.train`` in ``cwd`` (logs in ``cwd/logs``: torchrun's own parser takes ``--logs`` for an
    ambiguous abbreviation of its ``--logs-specs``, so the default ``./logs`` is used)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd(), PYTHONWARNINGS="ignore")
    argv = _tiny_run("unused", *extra)[1:]
    at = argv.index("--logs")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "clipfast.train", *argv[:at], *argv[at + 2:], "--device", "cpu"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
def test_two_process_run_records_world_size_and_refusals_reach_every_rank(tmp_path, capsys):
    first = _torchrun(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    state = ckpt.read_checkpoint(tmp_path / "logs" / "run" / "checkpoints" / "latest.pt")
    assert (state["world_size"], state["batch_size"]) == (2, 16)
    again = _torchrun(tmp_path)  # same folder without --resume: refused on rank 0, and rank 1 does not hang
    assert again.returncode != 0 and again.stderr.count("already holds a run") >= 2, again.stderr[-3000:]
    resumed = _torchrun(tmp_path, "--epochs", "2", "--resume", "latest")  # every rank loads rank 0's choice
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "logs" / "run" / "summary.json").read_text())["steps"] == 2  # 32 / (16 * 2) per epoch
    # one process: another world size
    assert main(_tiny_run(tmp_path / "logs", "--epochs", "2", "--resume", "latest")) == 1
    assert "world_size=2" in capsys.readouterr().err
