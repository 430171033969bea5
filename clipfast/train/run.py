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

from clipfast.train import distributed as dist_utils
from clipfast.train import errors
from clipfast.train.checkpointing import (check_resumable, find_resume, load_checkpoint, plain_args,
                                          remove_stale_temporaries, run_files)
from clipfast.train.distributed import any_rank
from clipfast.train.errors import CheckpointError, RunError, RunRefused
from clipfast.train.evaluate import model_image_size
from clipfast.train.optimizer import resolve_optimizer_args
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


def build_model(args, device):
    """(model, preprocess_train, preprocess_val, tokenizer) from clipfast's registry."""
    import clipfast

    kwargs = dict(pretrained=args.pretrained, precision=args.precision, device=device, output_dict=True)
    if args.force_context_length:
        kwargs["force_context_length"] = args.force_context_length
    if args.force_image_size:
        kwargs["force_image_size"] = args.force_image_size
    if args.force_quick_gelu:
        kwargs["force_quick_gelu"] = True
    model, pre_train, pre_val = clipfast.create_model_and_transforms(args.model, **kwargs)
    tokenizer = clipfast.get_tokenizer(args.model, context_length=args.force_context_length)
    return model, pre_train, pre_val, tokenizer


def _bad_sample_limits(args) -> dict:
    from clipfast.train.badsamples import DEFAULT_BAD_WINDOW, DEFAULT_MAX_BAD_FRACTION

    return dict(max_bad_fraction=getattr(args, "max_bad_sample_fraction", DEFAULT_MAX_BAD_FRACTION),
                bad_window=getattr(args, "bad_sample_window", DEFAULT_BAD_WINDOW))


def build_train_data(args, info, preprocess, tokenizer, size) -> TrainData:
    """TrainData over the data helper's dataset and deterministic, resumable loader."""
    from clipfast.train import data as data_lib

    dataset = data_lib.build_dataset(args, "train", preprocess=preprocess, tokenizer=tokenizer, image_size=size)

    def make_loader(epoch, skip):
        return data_lib.build_dataloader(dataset, args.batch_size, shuffle=True, seed=args.seed, epoch=epoch,
                                         workers=args.workers, rank=info.rank, world_size=info.world_size,
                                         drop_last=True, skip_batches=skip, **_bad_sample_limits(args))

    return TrainData(make_loader, make_loader(0, 0).num_batches, args.batch_size)


def build_evaluate(args, tokenizer, preprocess, size, device):
    """``evaluate(model, epoch) -> metrics`` for the dataset, or None when it has no eval."""
    from clipfast.train import evaluate as eval_lib

    if args.dataset_type == "shapes":
        def evaluate(model, epoch):
            return eval_lib.evaluate_shapes(model, tokenizer, args=args, image_size=size, device=device)
        return evaluate
    if args.val_data:
        from clipfast.train import data as data_lib

        val = data_lib.build_dataset(args, "val", preprocess=preprocess, tokenizer=tokenizer, image_size=size)
        if isinstance(val, data_lib.WebDatasetPairs):  # a stream: read through the counting loader, in order
            val = data_lib.build_dataloader(val, args.batch_size, shuffle=False, workers=args.workers, drop_last=False,
                                            **_bad_sample_limits(args))

        def evaluate(model, epoch):
            return eval_lib.retrieval_eval(model, val, batch_size=args.batch_size, device=device)
        return evaluate
    return None


def _run_dir(args, info) -> Path:
    if not args.name:
        name = f"{time.strftime('%Y_%m_%d-%H_%M_%S')}-model_{args.model}-lr_{args.lr}-b_{args.batch_size}-p_{args.precision}"
        if info.distributed:  # every rank must agree on the name
            obj = [name]
            torch.distributed.broadcast_object_list(obj, src=0)
            name = obj[0]
        args.name = name
    return Path(args.logs) / args.name


def run_train(args) -> int:
    info = dist_utils.init_distributed(args.device)
    try:
        with contextlib.ExitStack() as stack:
            resolve_optimizer_args(args)  # --bf16-weights sets the precision
            args.precision = resolve_precision(args.precision, info.device)
            run_dir = _run_dir(args, info)
            resume, state = _open_run(args, info, run_dir, stack)
            return _train(args, info, run_dir, resume, state)
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


def _open_run(args, info, run_dir: Path, stack: contextlib.ExitStack):
    """Lock the run folder (rank 0), find the checkpoint to resume (loaded once per rank), refuse to overwrite
    another run's files, remove dead writers' temporaries, write args.json. Returns ``(path, state)``."""
    ckpt_dir = run_dir / "checkpoints"

    def prepare():
        stack.enter_context(RunLock(run_dir))
        path, state = find_resume(args.resume, ckpt_dir)
        existing = run_files(run_dir)
        ours = path is not None and path.resolve().parent == ckpt_dir.resolve()
        # --resume latest in a folder with metrics but no checkpoint file at all (a run that saved nothing)
        fresh_after_nothing_saved = (args.resume == "latest" and path is None
                                     and not any(p.suffix == ".pt" for p in existing))
        if existing and not ours and not fresh_after_nothing_saved:
            names = ", ".join(str(p.relative_to(run_dir)) for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
            raise RunRefused(f"run folder {str(run_dir)!r} already holds a run ({names}); pass --resume latest to "
                             "continue it, or another --name" + (f" (--resume {args.resume} is not one of its "
                                                                 "checkpoints)" if path is not None else ""))
        if path is not None:  # refused before args.json or any other file is written
            check_resumable(state, path, batch_size=args.batch_size, world_size=info.world_size,
                            accum_freq=args.accum_freq)
        if fresh_after_nothing_saved and existing:
            log.warning("--resume latest: %s has no checkpoint yet; starting afresh (its metrics are reset)", run_dir)
            _truncate_jsonl(run_dir / "metrics.jsonl", 0)
        remove_stale_temporaries(ckpt_dir)
        remove_stale_temporaries(run_dir)  # metrics.jsonl.tmp-<pid> of a killed _truncate_jsonl
        (run_dir / "args.json").write_text(json.dumps(plain_args(args), indent=2))
        return path, state

    path, state = _on_master(info, prepare) or (None, None)
    if info.distributed:  # the other ranks load the file rank 0 chose
        obj = [None if path is None else str(path)]
        torch.distributed.broadcast_object_list(obj, src=0)
        error = None
        if not info.is_master and obj[0] is not None:
            path = Path(obj[0])
            try:
                state = load_checkpoint(path)
            except RunError as e:
                error = e
        if any_rank(error is not None, info.device):  # one rank could not read it (e.g. node-local --logs)
            raise error or CheckpointError(f"--resume {str(path)!r}: another rank could not load it")
    return path, state


def _train(args, info, run_dir: Path, resume, state) -> int:
    seed_everything(args.seed)  # same init on every rank
    model, pre_train, pre_val, tokenizer = build_model(args, info.device)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    size = model_image_size(model)
    data = build_train_data(args, info, pre_train, tokenizer, size)
    evaluate = build_evaluate(args, tokenizer, pre_val, size, info.device) if args.zeroshot_frequency else None
    wrapped = dist_utils.wrap_model(model, info, mode="fsdp" if args.fsdp else "ddp", static_graph=args.ddp_static_graph)
    if args.torchcompile:
        if args.grad_checkpointing and info.distributed:
            torch._dynamo.config.optimize_ddp = False  # open_clip #726
        wrapped = torch.compile(wrapped)
    import clipfast

    loss = clipfast.ClipLoss(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, cache_labels=True,
                             rank=info.rank, world_size=info.world_size, mode=args.loss_mode)
    trainer = Trainer(args, wrapped, loss, data, info=info, evaluate=evaluate, run_dir=run_dir)
    seed_everything(args.seed + info.rank)  # per-rank randomness from here on
    if resume is not None:
        trainer.resume(resume, state=state)
        del state
    n_params = sum(p.numel() for p in model.parameters())
    from clipfast import backend

    backends = ", ".join(f"{op}={backend.describe(backend.select(op, info.device), info.device)}"
                         for op in backend.OP_BACKENDS)
    opt = args.optimizer if args.optimizer == "adamw" else (
        f"{args.optimizer}, {args.opt_state_dtype} state{', SR of bf16 weights' if args.opt_stochastic_rounding else ''}"
        f"{', fp32 masters' if args.opt_master_weights else ''}")
    log.info("training %s (%.2fM params, %s, %s) for %d steps on %d x %s; ops: %s; run dir %s", args.model,
             n_params / 1e6, args.precision, opt, trainer.total_steps, info.world_size, info.device, backends, run_dir)
    summary = trainer.fit()
    if info.is_master:
        if not args.no_plots and summary["interrupted"] is None:
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
        from clipfast.train.plots import plot_metrics
    except ImportError as e:  # matplotlib missing: the run itself is fine
        log.warning("no plots: %s", e)
        return
    paths = plot_metrics(run_dir / "metrics.jsonl", run_dir / "plots")
    log.info("plots: %s", ", ".join(str(p) for p in paths or []))


def run_eval(args) -> int:
    """Evaluate ``--pretrained`` (or a fresh model) on the dataset's evaluation; prints metrics JSON."""
    info = dist_utils.init_distributed(args.device)
    args.precision = resolve_precision(args.precision, info.device)
    seed_everything(args.seed)
    model, _, pre_val, tokenizer = build_model(args, info.device)
    evaluate = build_evaluate(args, tokenizer, pre_val, model_image_size(model), info.device)
    if evaluate is None:
        log.error("nothing to evaluate: --dataset-type %s without --val-data", args.dataset_type)
        return 2
    model.eval()
    with torch.inference_mode():
        metrics = {k: float(v) for k, v in evaluate(model, 0).items()}
    print(json.dumps(metrics, indent=2))
    dist_utils.cleanup()
    return 0
