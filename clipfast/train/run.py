"""What ``clipfast train`` / ``clipfast eval`` do with parsed arguments: build, train, report.

Layout of a run (as open_clip_train): ``{logs}/{name}/args.json``, ``checkpoints/epoch_K.pt`` and
``latest.pt``, ``metrics.jsonl`` (one JSON object per logged step or eval), ``plots/*.png``,
``summary.json``, ``.lock`` (held by rank 0 for the run: one writer per folder, ``clipfast.train.runlock``).
Exit status: 0 done, 2 usage error or refusal before any work (folder locked or holding another run), 1 a
:class:`~clipfast.train.errors.RunError` (bad checkpoint, bad data), 128+N after signal N (a checkpoint was saved).
"""
import contextlib
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

import clipfast
from clipfast import backend
from clipfast.train import data as data_lib
from clipfast.train import distributed as dist_utils
from clipfast.train import errors
from clipfast.train import evaluate as eval_lib
from clipfast.train.checkpoint_files import check_resumable, find_resume, read_checkpoint, remove_stale_temporaries, run_files
from clipfast.train.distributed import any_rank
from clipfast.train.errors import CheckpointError, RunError, RunRefused
from clipfast.train.evaluate import model_image_size
from clipfast.train.plots import plot_metrics
from clipfast.train.runlock import RunLock
from clipfast.train.trainer import TrainData, Trainer, _truncate_jsonl

log = logging.getLogger("clipfast.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``amp_bf16`` on CUDA, ``fp32`` elsewhere."""
    if precision != "auto":
        return precision
    return "amp_bf16" if device.type == "cuda" else "fp32"


def build_model(cfg, device):
    """(model, preprocess_train, preprocess_val, tokenizer) from clipfast's registry."""
    kwargs = dict(pretrained=cfg.pretrained, precision=cfg.precision, device=device, output_dict=True)
    if cfg.force_context_length:
        kwargs["force_context_length"] = cfg.force_context_length
    if cfg.force_image_size:
        kwargs["force_image_size"] = cfg.force_image_size
    if cfg.force_quick_gelu:
        kwargs["force_quick_gelu"] = True
    model, pre_train, pre_val = clipfast.create_model_and_transforms(cfg.model, **kwargs)
    tokenizer = clipfast.get_tokenizer(cfg.model, context_length=cfg.force_context_length)
    return model, pre_train, pre_val, tokenizer


def build_dataset(cfg, split, preprocess, tokenizer, size):
    """The ``split`` ('train' or 'val') dataset of ``cfg``'s data flags (``clipfast.train.data.build_dataset``)."""
    train = split == "train"
    return data_lib.build_dataset(cfg.dataset_type, cfg.train_data if train else cfg.val_data, transform=preprocess,
                                  tokenizer=tokenizer, split=split,
                                  num_samples=cfg.train_num_samples if train else cfg.val_num_samples,
                                  csv_img_key=cfg.csv_img_key, csv_caption_key=cfg.csv_caption_key,
                                  csv_separator=cfg.csv_separator, seed=cfg.seed, image_size=size)


def _bad_sample_limits(cfg) -> dict:
    return dict(max_bad_fraction=cfg.max_bad_sample_fraction, bad_window=cfg.bad_sample_window)


def build_train_data(cfg, info, preprocess, tokenizer, size) -> TrainData:
    """TrainData over the data helper's dataset and deterministic, resumable loader."""
    dataset = build_dataset(cfg, "train", preprocess, tokenizer, size)

    def make_loader(epoch, skip):
        return data_lib.build_dataloader(dataset, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                                         workers=cfg.workers, rank=info.rank, world_size=info.world_size,
                                         drop_last=True, skip_batches=skip, **_bad_sample_limits(cfg))

    return TrainData(make_loader, make_loader(0, 0).num_batches, cfg.batch_size)


def build_evaluate(cfg, tokenizer, preprocess, size, device):
    """``evaluate(model, epoch) -> metrics`` for the dataset, or None when it has no eval."""
    if cfg.dataset_type == "shapes":
        def evaluate(model, epoch):
            return eval_lib.evaluate_shapes(model, tokenizer, image_size=size, device=device, seed=cfg.seed,
                                            num_samples=cfg.val_num_samples or 1000, batch_size=cfg.batch_size)
        return evaluate
    if cfg.val_data:
        val = build_dataset(cfg, "val", preprocess, tokenizer, size)
        if isinstance(val, data_lib.WebDatasetPairs):  # a stream: read through the counting loader, in order
            val = data_lib.build_dataloader(val, cfg.batch_size, shuffle=False, workers=cfg.workers, drop_last=False,
                                            **_bad_sample_limits(cfg))

        def evaluate(model, epoch):
            return eval_lib.retrieval_eval(model, val, batch_size=cfg.batch_size, device=device)
        return evaluate
    return None


def _run_dir(cfg, info) -> Path:
    if not cfg.name:
        name = f"{time.strftime('%Y_%m_%d-%H_%M_%S')}-model_{cfg.model}-lr_{cfg.lr}-b_{cfg.batch_size}-p_{cfg.precision}"
        if info.distributed:  # every rank must agree on the name
            obj = [name]
            torch.distributed.broadcast_object_list(obj, src=0)
            name = obj[0]
        cfg.name = name
    return Path(cfg.logs) / cfg.name


def run_train(cfg) -> int:
    info = dist_utils.init_distributed(cfg.device)
    try:
        with contextlib.ExitStack() as stack:
            cfg = cfg.replace(precision=resolve_precision(cfg.precision, info.device))
            run_dir = _run_dir(cfg, info)
            resume, state = _open_run(cfg, info, run_dir, stack)
            return _train(cfg, info, run_dir, resume, state)
    finally:
        dist_utils.cleanup()


def _on_master(info, fn):
    """``fn()`` on rank 0; an exception there is raised on every rank (a :class:`RunError` with the same class
    and message, anything else as a ``RunError`` naming it), so no rank goes on alone into a collective.
    Returns rank 0's result (None elsewhere)."""
    result, error = None, None
    if info.is_master:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    if info.distributed:
        obj = [None if error is None else (type(error).__name__, str(error))]
        torch.distributed.broadcast_object_list(obj, src=0)
        if obj[0] is not None and error is None:
            kind = getattr(errors, obj[0][0], None)  # same class, same exit status
            error = kind(obj[0][1]) if isinstance(kind, type) and issubclass(kind, RunError) else \
                RunError(f"rank 0 failed: {obj[0][0]}: {obj[0][1]}")
    if error is not None:
        raise error
    return result


def _open_run(cfg, info, run_dir: Path, stack: contextlib.ExitStack):
    """Lock the run folder (rank 0), find the checkpoint to resume (loaded once per rank), refuse to overwrite
    another run's files, remove dead writers' temporaries, write args.json. Returns ``(path, state)``."""
    ckpt_dir = run_dir / "checkpoints"

    def prepare():
        stack.enter_context(RunLock(run_dir))
        path, state = find_resume(cfg.resume, ckpt_dir)
        existing = run_files(run_dir)
        ours = path is not None and path.resolve().parent == ckpt_dir.resolve()
        # --resume latest in a folder with metrics but no checkpoint file at all (a run that saved nothing)
        fresh_after_nothing_saved = (cfg.resume == "latest" and path is None
                                     and not any(p.suffix == ".pt" for p in existing))
        if existing and not ours and not fresh_after_nothing_saved:
            names = ", ".join(str(p.relative_to(run_dir)) for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
            raise RunRefused(f"run folder {str(run_dir)!r} already holds a run ({names}); pass --resume latest to "
                             "continue it, or another --name" + (f" (--resume {cfg.resume} is not one of its "
                                                                 "checkpoints)" if path is not None else ""))
        if path is not None:  # refused before args.json or any other file is written
            check_resumable(state, path, batch_size=cfg.batch_size, world_size=info.world_size,
                            accum_freq=cfg.accum_freq)
        if fresh_after_nothing_saved and existing:
            log.warning("--resume latest: %s has no checkpoint yet; starting afresh (its metrics are reset)", run_dir)
            _truncate_jsonl(run_dir / "metrics.jsonl", 0)
        remove_stale_temporaries(ckpt_dir)
        remove_stale_temporaries(run_dir)  # metrics.jsonl.tmp-<pid> of a killed _truncate_jsonl
        (run_dir / "args.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        return path, state

    path, state = _on_master(info, prepare) or (None, None)
    if info.distributed:  # the other ranks load the file rank 0 chose
        obj = [None if path is None else str(path)]
        torch.distributed.broadcast_object_list(obj, src=0)
        error = None
        if not info.is_master and obj[0] is not None:
            path = Path(obj[0])
            try:
                state = read_checkpoint(path)
            except RunError as e:
                error = e
        if any_rank(error is not None, info.device):  # one rank could not read it (e.g. node-local --logs)
            raise error or CheckpointError(f"--resume {str(path)!r}: another rank could not load it")
    return path, state


def _train(cfg, info, run_dir: Path, resume, state) -> int:
    seed_everything(cfg.seed)  # same init on every rank
    model, pre_train, pre_val, tokenizer = build_model(cfg, info.device)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    size = model_image_size(model)
    data = build_train_data(cfg, info, pre_train, tokenizer, size)
    evaluate = build_evaluate(cfg, tokenizer, pre_val, size, info.device) if cfg.zeroshot_frequency else None
    wrapped = dist_utils.wrap_model(model, info, mode="fsdp" if cfg.fsdp else "ddp", static_graph=cfg.ddp_static_graph)
    if cfg.torchcompile:
        if cfg.grad_checkpointing and info.distributed:
            torch._dynamo.config.optimize_ddp = False  # open_clip #726
        wrapped = torch.compile(wrapped)
    loss = clipfast.ClipLoss(local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad, cache_labels=True,
                             rank=info.rank, world_size=info.world_size, mode=cfg.loss_mode)
    trainer = Trainer(cfg, wrapped, loss, data, info=info, evaluate=evaluate, run_dir=run_dir)
    seed_everything(cfg.seed + info.rank)  # per-rank randomness from here on
    if resume is not None:
        trainer.resume(resume, state=state)
        del state
    n_params = sum(p.numel() for p in model.parameters())
    backends = ", ".join(f"{op}={backend.describe(backend.select(op, info.device), info.device)}"
                         for op in backend.OP_BACKENDS)
    opt = cfg.optimizer if cfg.optimizer == "adamw" else (
        f"{cfg.optimizer}, {cfg.opt_state_dtype} state{', SR of bf16 weights' if cfg.opt_stochastic_rounding else ''}"
        f"{', fp32 masters' if cfg.opt_master_weights else ''}")
    log.info("training %s (%.2fM params, %s, %s) for %d steps on %d x %s; ops: %s; run dir %s", cfg.model,
             n_params / 1e6, cfg.precision, opt, trainer.total_steps, info.world_size, info.device, backends, run_dir)
    summary = trainer.fit()
    if info.is_master:
        if not cfg.no_plots and summary["interrupted"] is None:
            _plot(run_dir)
        summary["run_dir"] = str(run_dir)
        summary["checkpoint"] = str(run_dir / "checkpoints" / "latest.pt")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        _log_summary(summary)
    sig = summary["interrupted"]
    return 0 if sig is None else 128 + max(sig, 0)


def _log_summary(summary: dict) -> None:
    width = max(map(len, summary), default=0)
    lines = [f"  {k:<{width}} {v:.4f}" if isinstance(v, float) else f"  {k:<{width}} {v}" for k, v in summary.items()]
    log.info("summary (also in %s/summary.json):\n%s", summary.get("run_dir", "."), "\n".join(lines))


def _plot(run_dir: Path) -> None:
    try:
        paths = plot_metrics(run_dir / "metrics.jsonl", run_dir / "plots")
    except ImportError as e:  # matplotlib missing: the run itself is fine
        log.warning("no plots: %s", e)
        return
    log.info("plots: %s", ", ".join(str(p) for p in paths or []))


def run_eval(cfg) -> int:
    """Evaluate ``--pretrained`` (or a fresh model) on the dataset's evaluation; prints metrics JSON."""
    info = dist_utils.init_distributed(cfg.device)
    cfg = cfg.replace(precision=resolve_precision(cfg.precision, info.device))
    seed_everything(cfg.seed)
    model, _, pre_val, tokenizer = build_model(cfg, info.device)
    evaluate = build_evaluate(cfg, tokenizer, pre_val, model_image_size(model), info.device)
    if evaluate is None:
        log.error("nothing to evaluate: --dataset-type %s without --val-data", cfg.dataset_type)
        return 2
    model.eval()
    with torch.inference_mode():
        metrics = {k: float(v) for k, v in evaluate(model, 0).items()}
    print(json.dumps(metrics, indent=2))
    dist_utils.cleanup()
    return 0
