"""The training loop: OpenCLIP's step contract, exact gradient accumulation, resumable state.

One optimizer step on ``K = accum_freq`` micro-batches (each ``(images, texts)``, B rows):

    K == 1:  loss(**model(images, texts)) -> backward
    K  > 1:  1. under no_grad, features f_1..f_K of every micro-batch (cached negatives)
             2. for j in 1..K: recompute f_j with grad; L_j = loss(f_1..f_j..f_K) on all K*B rows;
                backward. Only f_j carries grad in pass j, so sum_j dL_j = dL(full batch) for the
                towers; logit_scale/logit_bias get 1/K of their gradient per pass (same value), so
                the sum is exactly the full-batch gradient (OpenCLIP gives them K times it).
                Under DDP/FSDP the first K-1 backward passes skip the gradient all-reduce.
    then: (GradScaler unscale) -> clip_grad_norm_ -> optimizer.step -> logit_scale.clamp_(0, ln 100).

The lr is set per step by a warmup+cosine schedule (``clipfast.train.schedule``). State saved in
checkpoints (``clipfast.train.checkpoint_files``): model, optimizer, scaler, step, epoch, micro-batches
consumed in the epoch, RNG states; the schedule is a function of the step. Resuming replays the
data loader from the same position, so the losses after resuming equal the uninterrupted run's.
"""
import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from clipfast.precision import get_input_dtype
from clipfast.train import checkpoint_files as ckpt
from clipfast.train.compat import to_clipfast_state
from clipfast.train.distributed import (DistInfo, all_reduce_mean, any_rank, barrier, full_state_dicts,
                                      load_full_state_dicts, unwrap_model)
from clipfast.train.errors import BadDataError, CheckpointError
from clipfast.train.optimizer import build_optimizer
from clipfast.train.schedule import WarmupCosine

log = logging.getLogger(__name__)

LOGIT_SCALE_MAX = math.log(100)


def autocast(precision: str, device_type: str):
    """Autocast context for ``precision``: fp16 for ``amp``, bf16 for ``amp_bf16``, else none."""
    if precision == "amp":
        return torch.autocast(device_type, dtype=torch.float16)
    if precision in ("amp_bf16", "amp_bfloat16"):
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _grad_scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` in value, ``factor * dx`` in gradient."""
    d = x.detach()
    return d + (x - d) * factor


@contextlib.contextmanager
def _no_grad_sync(model, skip: bool):
    """Skip the data-parallel gradient reduction of the backward passes inside (DDP and FSDP2)."""
    if not skip:
        yield
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


@dataclasses.dataclass
class TrainData:
    """What the loop needs from the data side.

    Attributes:
        make_loader: ``(epoch, skip_batches) -> iterable of (images, texts)`` micro-batches of this
            rank, deterministic in (seed, epoch), starting after ``skip_batches`` micro-batches.
        num_batches: micro-batches per epoch on each rank.
        batch_size: rows per micro-batch on each rank.
    """
    make_loader: Callable[[int, int], Iterable]
    num_batches: int
    batch_size: int


class Trainer:
    """Trains ``model`` with ``loss_fn`` on ``data``; rank 0 logs, writes metrics and checkpoints.

    Args:
        cfg: the run's settings (``clipfast.train.config.TrainConfig``).
        model: the (already data-parallel wrapped, if any) module; its unwrapped form has
            ``logit_scale`` and returns a dict (``output_dict=True``).
        loss_fn: ``loss_fn(image_features, text_features, logit_scale, [logit_bias], output_dict=True)``.
        data: :class:`TrainData`.
        info: rank/world/device.
        evaluate: optional ``evaluate(unwrapped_model, epoch) -> dict[str, float]`` run on rank 0.
        run_dir: ``{logs}/{name}``; None writes nothing (tests).
    """

    def __init__(self, cfg, model, loss_fn, data: TrainData, *, info: Optional[DistInfo] = None,
                 evaluate: Optional[Callable] = None, run_dir=None):
        self.cfg, self.model, self.loss_fn, self.data = cfg, model, loss_fn, data
        self.info = info or DistInfo()
        self.device = self.info.device
        self.evaluate_fn = evaluate
        self.run_dir = Path(run_dir) if run_dir is not None and self.info.is_master else None
        self.ckpt_dir = Path(run_dir) / "checkpoints" if run_dir is not None else None
        self.accum = cfg.accum_freq
        if self.accum < 1:
            raise ValueError(f"accum_freq must be >= 1, got {self.accum}")
        self.steps_per_epoch = data.num_batches // self.accum
        if self.steps_per_epoch < 1:
            raise ValueError(f"an epoch has {data.num_batches} micro-batches, fewer than accum_freq={self.accum}: "
                             "lower --batch-size or --accum-freq, or use more data")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        base = unwrap_model(model)
        self.optimizer = build_optimizer(cfg, base)  # --optimizer: torch's AdamW or clipfast.optim.AdamW
        self.scheduler = WarmupCosine(self.optimizer, cfg.lr, cfg.warmup, self.total_steps, cfg.lr_scheduler)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "amp" else None
        self.step = self.epoch = self.batch_in_epoch = 0
        self.train_time = 0.0
        self.metrics: dict = {}
        self._stop = ckpt.StopSignal()
        self._callbacks: list = []

    # ---- one optimizer step ------------------------------------------------------------------
    def train_step(self, micro_batches: list) -> dict:
        """One optimizer step on ``accum_freq`` micro-batches; returns detached loss terms.

        Shapes: each micro-batch is (images (B, 3, H, W), texts (B, L) int64).
        Returns: ``{"loss": total, <loss terms>..., "logit_scale": scalar}`` as 0-d tensors.
        """
        cfg, model, dev = self.cfg, self.model, self.device
        in_dtype = get_input_dtype(cfg.precision)
        batches = [(im.to(dev, dtype=in_dtype, non_blocking=True), tx.to(dev, non_blocking=True)) for im, tx in micro_batches]
        k = len(batches)
        self.optimizer.zero_grad(set_to_none=True)
        cached = {}
        if k > 1:
            with torch.no_grad(), autocast(cfg.precision, dev.type):
                for im, tx in batches:
                    for key, val in model(im, tx).items():
                        if key not in ("logit_scale", "logit_bias"):
                            cached.setdefault(key, []).append(val)
        for j, (im, tx) in enumerate(batches):
            with _no_grad_sync(model, skip=j < k - 1), autocast(cfg.precision, dev.type):
                out = model(im, tx)
                if k > 1:
                    inputs = {key: torch.cat(v[:j] + [out[key]] + v[j + 1:]) for key, v in cached.items()}
                    for key in ("logit_scale", "logit_bias"):
                        if key in out:
                            inputs[key] = _grad_scaled(out[key], 1.0 / k)
                    out = inputs
                losses = self.loss_fn(**out, output_dict=True)
                total = sum(losses.values())
                (self.scaler.scale(total) if self.scaler is not None else total).backward()
        if self.scaler is not None and cfg.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm, norm_type=2.0)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        base = unwrap_model(model)
        with torch.no_grad():
            base.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        stats = {name: v.detach() for name, v in losses.items()}
        stats["loss"] = total.detach()
        scale = base.logit_scale.detach()
        scale = scale.full_tensor() if hasattr(scale, "full_tensor") else scale  # FSDP2 DTensor
        stats["logit_scale"] = scale.float().exp().reshape(-1)[0]
        return stats

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        model_sd, optim_sd = full_state_dicts(self.model, self.optimizer)
        return {
            "epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
            "name": self.cfg.name, "args": self.cfg.to_dict(),
            "state_dict": model_sd, "optimizer": optim_sd,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": ckpt.rng_state(), "metrics": dict(self.metrics),
            "batch_size": self.data.batch_size, "world_size": self.info.world_size, "accum_freq": self.accum,
        }

    def load_state_dict(self, state: dict) -> None:
        load_full_state_dicts(self.model, self.optimizer, state["state_dict"], state.get("optimizer"))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        self.metrics = dict(state.get("metrics") or {})
        if state.get("rng") is not None:
            ckpt.set_rng_state(state["rng"])

    def resume(self, path, state: Optional[dict] = None) -> None:
        """Restore everything from a checkpoint file written by :meth:`save` (or by ``open_clip_train``, see
        ``clipfast.train.compat``); ``state`` is the file's content when already loaded (not read again).

        Raises:
            CheckpointError: the file is empty/unreadable, holds plain weights, or was written with another
                batch size, world size or accum_freq (``checkpoint_files.check_resumable``).
        """
        if state is None:
            state = ckpt.read_checkpoint(path, map_location="cpu")
        ckpt.check_resumable(state, path, batch_size=self.data.batch_size, world_size=self.info.world_size,
                             accum_freq=self.accum)
        try:
            converted = to_clipfast_state(state, self.optimizer, unwrap_model(self.model), self.steps_per_epoch)
        except ValueError as e:  # optimizer state that does not fit this model / these param groups
            raise CheckpointError(f"--resume {str(path)!r}: {e}") from e
        self.load_state_dict(converted)
        log.info("resumed from %s at epoch %d, step %d (%d micro-batches into the epoch)", path, self.epoch, self.step, self.batch_in_epoch)
        if self.run_dir is not None:
            _truncate_jsonl(self.run_dir / "metrics.jsonl", self.step)

    def save(self, epoch_file: bool = False) -> Optional[Path]:
        """Write ``latest.pt`` (and ``epoch_K.pt`` when ``epoch_file``); rank 0 writes, all ranks take part."""
        if self.ckpt_dir is None:
            return None
        state = self.state_dict()  # collective under FSDP
        path = None
        if self.info.is_master:
            path = ckpt.atomic_save(state, self.ckpt_dir / "latest.pt")
            if epoch_file:
                path = ckpt.atomic_save(state, self.ckpt_dir / f"epoch_{self.epoch}.pt")
                ckpt.keep_last_k(self.ckpt_dir, self.cfg.keep_last)
            log.info("saved checkpoint %s (step %d)", path, self.step)
        barrier()
        return path

    # ---- the loop ----------------------------------------------------------------------------
    def add_callback(self, fn: Callable) -> None:
        """``fn(trainer, stats)`` after every optimizer step (tests use it to stop early)."""
        self._callbacks.append(fn)

    def request_stop(self) -> None:
        """Save and leave the loop after the current step, as SIGTERM does."""
        self._stop.signum = self._stop.signum or -1

    def fit(self) -> dict:
        """Train from the current state to ``cfg.epochs``; returns the summary dict.

        ``summary["interrupted"]`` is the signal number (or -1 for :meth:`request_stop`) when the
        run stopped early after saving ``latest.pt``, else None.

        Raises:
            BadDataError: an epoch trained 0 of its steps (the loader yielded nothing); nothing is saved.
                The loader's own ``BadDataError`` (too many bad samples) passes through, also unsaved.
        """
        self.train_time = 0.0
        start_step = self.step
        with self._stop:
            interrupted = None
            while self.epoch < self.cfg.epochs:
                expected, steps_before = self.steps_per_epoch - self.batch_in_epoch // self.accum, self.step
                if self._train_epoch():
                    interrupted = self._stop.signum
                    self.save()
                    break
                self._check_epoch_steps(self.step - steps_before, expected)
                self.epoch += 1
                self.batch_in_epoch = 0
                freq = self.cfg.zeroshot_frequency
                if self.evaluate_fn is not None and freq and (self.epoch % freq == 0 or self.epoch == self.cfg.epochs):
                    self._evaluate()
                save_freq = self.cfg.save_frequency
                if save_freq and (self.epoch % save_freq == 0 or self.epoch == self.cfg.epochs):
                    self.save(epoch_file=True)
        steps = self.step - start_step
        summary = {
            "steps": self.step, "epochs": self.epoch, "train_s": round(self.train_time, 2),
            "samples_per_s": round(steps * self.accum * self.data.batch_size * self.info.world_size / max(self.train_time, 1e-9), 2),
            "interrupted": interrupted, **self.metrics,
        }
        if self.run_dir is not None:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _check_epoch_steps(self, done: int, expected: int) -> None:
        """An epoch that trained nothing is an error (nothing is saved); a short one is a warning."""
        if done == 0 and expected > 0:
            raise BadDataError(f"epoch {self.epoch} trained 0 of {expected} steps: the data loader yielded no batch "
                               "(every sample missing or corrupt? see the warnings above; check --train-data and "
                               "--train-num-samples). Nothing was saved")
        if done < expected:
            log.warning("epoch %d trained %d of %d steps: the data ran out early", self.epoch, done, expected)

    def _evaluate(self) -> dict:
        metrics = {}
        if self.info.is_master:
            base = unwrap_model(self.model)
            was_training = base.training
            base.eval()
            with torch.inference_mode(), autocast(self.cfg.precision, self.device.type):
                metrics = {f"val/{k}": float(v) for k, v in self.evaluate_fn(base, self.epoch).items()}
            base.train(was_training)
            self.metrics.update(metrics)
            self._write_metrics({"step": self.step, "epoch": self.epoch, **metrics})
            log.info("eval after epoch %d: %s", self.epoch, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        barrier()
        return metrics

    def _write_metrics(self, record: dict) -> None:
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _train_epoch(self) -> bool:
        """Steps until the epoch ends (False) or a stop is requested and agreed by all ranks (True)."""
        from tqdm.auto import tqdm

        cfg, k = self.cfg, self.accum
        every = cfg.log_every_n_steps
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"epoch {self.epoch}", unit="step",
                   disable=not self.info.is_master or cfg.no_progress or None, dynamic_ncols=True)
        loader = self.data.make_loader(self.epoch, self.batch_in_epoch)
        micro, tick = [], time.time()
        start = tick
        try:
            for batch in loader:
                if self.batch_in_epoch + len(micro) >= self.steps_per_epoch * k:
                    break
                micro.append(batch)
                if len(micro) < k:
                    continue
                self.scheduler(self.step)
                stats = self.train_step(micro)
                micro = []
                self.step += 1
                self.batch_in_epoch += k
                bar.update(1)
                if self.step % every == 0 or self.batch_in_epoch >= self.steps_per_epoch * k:
                    tock = time.time()
                    sps = every * k * self.data.batch_size * self.info.world_size / max(tock - tick, 1e-9)
                    tick = tock
                    self._log_step(stats, sps, bar)
                for fn in self._callbacks:
                    fn(self, stats)
                n = cfg.save_every_n_steps
                if n and self.step % n == 0:
                    self.save()
                # Ranks agree on stopping at the same step; under a process group only every `every`
                # steps (one tiny all-reduce and host sync each time).
                check = not self.info.distributed or self.step % every == 0
                if check and any_rank(self._stop.requested, self.device):
                    self._stop.signum = self._stop.signum or -1
                    return True
        finally:
            bar.close()
            self.train_time += time.time() - start
        return False

    def _log_step(self, stats: dict, samples_per_s: float, bar) -> None:
        values = {name: all_reduce_mean(v).item() for name, v in stats.items()}
        lr = self.optimizer.param_groups[-1]["lr"]
        record = {"step": self.step, "epoch": self.epoch + self.batch_in_epoch / (self.steps_per_epoch * self.accum),
                  "train/lr": lr, "train/samples_per_second": samples_per_s,
                  **{f"train/{name}": v for name, v in values.items()}}
        self.metrics["train/loss"] = values["loss"]
        if not self.info.is_master:
            return
        self._write_metrics(record)
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", sps=f"{samples_per_s:.0f}")
        log.info("epoch %d step %d/%d loss %.4f lr %.3e scale %.2f %.1f samples/s", self.epoch, self.step,
                 self.total_steps, values["loss"], lr, values["logit_scale"], samples_per_s)


def _truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop records logged after ``max_step`` (written before a crash, replayed after resume).

    Lines that are not JSON objects (a torn last line of a process killed mid-write) are dropped with a
    warning naming the file and line. The file is replaced atomically.
    """
    if not path.is_file():
        return
    keep, torn = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            torn.append(number)
            continue
        if record.get("step", 0) <= max_step:
            keep.append(line)
    if torn:
        log.warning("%s: dropped %d unreadable line(s) (line %s; a write cut short?)", path, len(torn),
                    ", ".join(map(str, torn[:5])))
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)
