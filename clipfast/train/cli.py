"""``clipfast train`` / ``clipfast eval``: the command line (flags mirror open_clip_train's names).

    clipfast train --model demo-vit --dataset-type shapes --epochs 10 --batch-size 128
    torchrun --nproc-per-node 8 -m clipfast.train --model ViT-B-32 --dataset-type webdataset \\
        --train-data '/data/{00000..01023}.tar' --train-num-samples 10000000 --precision amp_bf16
    clipfast train --config run.yaml --lr 1e-3        # flags after the file override it
    clipfast eval --model demo-vit --pretrained logs/demo/checkpoints/latest.pt

``--config`` takes a .json or .yaml mapping whose keys are flag names (``batch-size`` or
``batch_size``); explicit flags win over the file. Its values are checked like command-line ones (types,
ranges, choices; a switch takes true/false, null keeps a None default); unknown keys are an error.
Numeric flags are range-checked by ``clipfast.train.argtypes``; every refusal happens before any work.
"""
import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import clipfast
from clipfast.loss import MODES as LOSS_MODES
from clipfast.train import argtypes as T
from clipfast.train import bench
from clipfast.train import run
from clipfast.train.config import PRECISIONS, TrainConfig
from clipfast.train.data import DATASET_TYPES, expand_shards
from clipfast.train.errors import RunError
from clipfast.train.optimizer import OPT_STATE_DTYPES, OPTIMIZERS
from clipfast.train.schedule import SCHEDULES

log = logging.getLogger("clipfast.train")


class CliError(Exception):
    """A usage error reported as ``clipfast <command>: error: ...`` with exit status 2, before any work."""

    def __init__(self, message, command=None):
        super().__init__(message)
        self.command = command


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="model config name (see --list-models); default: %(default)s")
    g.add_argument("--pretrained", help="checkpoint file (clipfast or OpenCLIP state dict) to start from")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="amp: fp16 autocast + GradScaler; amp_bf16: bf16 autocast; fp16/bf16: low-precision weights with "
                        "fp32 LayerNorm; pure_fp16/pure_bf16: whole model cast; fp32. auto: amp_bf16 on CUDA, fp32 on CPU")
    g.add_argument("--force-context-length", type=T.int_at_least(1), help="override the text tower's context length")
    g.add_argument("--force-image-size", type=T.int_at_least(1), help="override the vision tower's image size")
    g.add_argument("--force-quick-gelu", action="store_true", help="use QuickGELU (OpenAI weights)")
    g.add_argument("--list-models", action="store_true", help="print the model config names and exit")
    g = p.add_argument_group("data")
    g.add_argument("--dataset-type", choices=DATASET_TYPES,
                   help="shapes: built-in colour x shape captions (no files); synthetic: random tensors; csv; folder (images with "
                        "<stem>.txt captions); webdataset; auto: from the --train-data path. default: %(default)s")
    g.add_argument("--train-data", help="csv file or webdataset shards (brace notation) for training")
    g.add_argument("--val-data", help="csv file or webdataset shards for validation")
    g.add_argument("--train-num-samples", type=T.int_at_least(1), help="samples per epoch (required for webdataset)")
    g.add_argument("--val-num-samples", type=T.int_at_least(1), help="validation samples (webdataset)")
    g.add_argument("--csv-separator", help="csv column separator; default: tab")
    g.add_argument("--csv-img-key", help="csv column with image paths; default: %(default)s")
    g.add_argument("--csv-caption-key", help="csv column with captions; default: %(default)s")
    g.add_argument("--workers", type=T.int_at_least(0), help="data loader worker processes per rank; default: %(default)s")
    g.add_argument("--batch-size", type=T.int_at_least(1), help="micro-batch size per process; default: %(default)s")
    g.add_argument("--max-bad-sample-fraction", type=T.fraction,
                   help="stop with an error when more than this share of the first --bad-sample-window loads are bad "
                        "(missing/corrupt images, short rows, unreadable shard members); 1: never. default: %(default)s")
    g.add_argument("--bad-sample-window", type=T.int_at_least(1),
                   help="loads per rank over which --max-bad-sample-fraction is judged; default: %(default)s")
    g = p.add_argument_group("run")
    g.add_argument("--device", help="auto (cuda when available), cpu, cuda; default: %(default)s")
    g.add_argument("--seed", type=T.seed, help="seeds model init, data order and RNGs; default: %(default)s")
    g.add_argument("--logs", help="root folder of runs: {logs}/{name}/...; default: %(default)s")
    g.add_argument("--name", help="run name; default: model-date-time")
    g.add_argument("--log-level", help="logging level; default: %(default)s")
    g.add_argument("--config", help="a .json or .yaml file of flag values (keys = flag names); flags override it")


def _add_train(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=T.int_at_least(1), help="epochs to train; default: %(default)s")
    g.add_argument("--lr", type=T.positive_float, help="peak learning rate; default: %(default)s")
    g.add_argument("--wd", type=T.nonnegative_float,
                   help="AdamW weight decay (not on gains, biases, logit_scale); default: %(default)s")
    g.add_argument("--wd-exclude-embeddings", action="store_true", help="also no weight decay on 2-D embeddings")
    g.add_argument("--beta1", type=T.unit_interval_open, help="AdamW beta1; default: %(default)s")
    g.add_argument("--beta2", type=T.unit_interval_open, help="AdamW beta2; default: %(default)s")
    g.add_argument("--eps", type=T.positive_float, help="AdamW epsilon; default: %(default)s")
    g.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="adamw: torch.optim.AdamW (OpenCLIP's); clipfast-adamw: clipfast.optim.AdamW, one fused pass, "
                        "bf16/fp16 m and v, stochastically rounded bf16 weights. default: adamw (clipfast-adamw with "
                        "--bf16-weights)")
    g.add_argument("--opt-state-dtype", choices=OPT_STATE_DTYPES,
                   help="clipfast-adamw: dtype of m and v (bfloat16: 4 B/param, stochastically rounded; float16: m and "
                        "sqrt(v) with per-tensor scales). default: float32 (bfloat16 with --bf16-weights)")
    g.add_argument("--opt-stochastic-rounding", action=argparse.BooleanOptionalAction,
                   help="clipfast-adamw: round bf16 weights stochastically after each update (seeded by --seed); "
                        "default: on with clipfast-adamw")
    g.add_argument("--opt-master-weights", action="store_true",
                   help="clipfast-adamw: keep fp32 master copies of fp16/bf16 weights in the optimizer state")
    g.add_argument("--bf16-weights", action="store_true",
                   help="bf16 weights updated with stochastic rounding (6 B/param with bf16 state): --precision "
                        "pure_bf16 unless bf16/pure_bf16 is given, --optimizer clipfast-adamw, --opt-state-dtype "
                        "bfloat16 unless given")
    g.add_argument("--warmup", type=T.int_at_least(0), help="linear warmup steps; default: %(default)s")
    g.add_argument("--lr-scheduler", choices=SCHEDULES, help="after warmup; default: %(default)s")
    g.add_argument("--accum-freq", type=T.int_at_least(1),
                   help="micro-batches per optimizer step, with cached features as negatives (exact for the contrastive loss)")
    g.add_argument("--grad-clip-norm", type=T.positive_float, help="clip the global gradient norm to this")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute transformer blocks in backward")
    g.add_argument("--torchcompile", action="store_true", help="torch.compile the (wrapped) model")
    g = p.add_argument_group("loss and distributed (run under torchrun)")
    g.add_argument("--local-loss", action="store_true", help="local x global logits per rank instead of global x global")
    g.add_argument("--gather-with-grad", action="store_true", help="all-gather features with gradient")
    g.add_argument("--loss-mode", choices=LOSS_MODES,
                   help="gather: all-gather features (OpenCLIP; see --local-loss/--gather-with-grad); ring: pass text "
                        "blocks around the ranks, O(B*d) memory per rank (implies local loss). default: %(default)s")
    g.add_argument("--fsdp", action="store_true", help="FSDP2 fully_shard per block instead of DDP")
    g.add_argument("--ddp-static-graph", action="store_true", help="DDP static_graph=True")
    g = p.add_argument_group("evaluation, checkpoints, logging")
    g.add_argument("--zeroshot-frequency", type=T.int_at_least(0),
                   help="zero-shot eval every N epochs (0: never); default: %(default)s")
    g.add_argument("--save-frequency", type=T.int_at_least(0), help="epoch_K.pt every N epochs (0: never); default: %(default)s")
    g.add_argument("--save-every-n-steps", type=T.int_at_least(0), help="also save latest.pt every N steps (0: never)")
    g.add_argument("--keep-last", type=T.int_at_least(0), help="keep only the newest K epoch_*.pt (0: all)")
    g.add_argument("--resume",
                   help="checkpoint file to resume from, or 'latest': the newest loadable checkpoint of {logs}/{name} "
                        "(latest.pt, else the newest epoch_*.pt; a fresh start when there is none). The run must keep "
                        "--batch-size, --accum-freq and the number of processes (else it refuses: the data position and "
                        "schedule are counted in those batches); to change them start a new run with --pretrained FILE")
    g.add_argument("--log-every-n-steps", type=T.int_at_least(1), help="metrics line every N steps; default: %(default)s")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots at the end")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipfast", description="Train and evaluate CLIP models with clipfast's fused kernels.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,bench}", required=True)
    train = sub.add_parser("train", help="train a CLIP (python -m clipfast.train is the same)",
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    _add_common(train)
    _add_train(train)
    ev = sub.add_parser("eval", help="evaluate a checkpoint (zero-shot on the dataset's classes)")
    _add_common(ev)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name != "command"}
    for p in (train, ev):  # the defaults are TrainConfig's (eval gets the training ones too)
        p.set_defaults(**defaults)
    sub.add_parser("bench", add_help=False, help="run the benchmark suite, write a report (clipfast bench -h)")
    return parser


def _load_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"--config: file {path!r} does not exist")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            cfg = yaml.safe_load(text)
        elif p.suffix.lower() == ".json":
            cfg = json.loads(text)
        else:
            raise CliError(f"--config: expected a .json, .yaml or .yml file, got {path!r}")
    except CliError:
        raise
    except Exception as e:  # noqa: BLE001 - yaml.YAMLError, json.JSONDecodeError
        raise CliError(f"--config {path}: cannot parse the file: {e}") from None
    if not isinstance(cfg, dict):
        raise CliError(f"--config: {path!r} must hold a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in cfg.items()}


def _config_tokens(sub: argparse.ArgumentParser, cfg: dict, path: str) -> list:
    """``cfg`` (dest -> value) as command-line tokens, so argparse's types and choices apply to it.

    A switch (``store_true``) is its flag when true and nothing when false; ``null`` keeps the default
    (allowed only where the default is None); lists are for flags taking several values.
    """
    actions = {a.dest: a for a in sub._actions if a.option_strings}
    unknown = sorted(set(cfg) - set(actions) - {"config"})
    if unknown:
        raise CliError(f"--config {path}: unknown keys {unknown}")
    tokens = []
    for dest, value in cfg.items():
        if dest == "config":
            continue
        action = actions[dest]
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise CliError(f"--config {path}: {flag} is a switch: expected true or false, got {value!r}")
            tokens += [flag] if value else []
        elif isinstance(action, argparse.BooleanOptionalAction) and value is not None:
            if not isinstance(value, bool):
                raise CliError(f"--config {path}: {action.option_strings[0]} is a switch: expected true or false, "
                               f"got {value!r}")
            positive = min(action.option_strings, key=len)  # --x (the other is --no-x)
            tokens.append(positive if value else f"--no-{positive[2:]}")
        elif value is None:
            if action.default is not None:
                raise CliError(f"--config {path}: {flag}: null is not a value (default {action.default!r})")
        elif isinstance(value, (list, tuple)) or isinstance(value, dict):
            if action.nargs in (None, "?") or not isinstance(value, (list, tuple)):
                raise CliError(f"--config {path}: {flag} takes one value, got {value!r}")
            tokens += [flag, *map(str, value)]
        else:
            tokens.append(f"{flag}={str(value).lower() if isinstance(value, bool) else value}")
    return tokens


def _strict_parse(sub: argparse.ArgumentParser, tokens: list) -> None:
    """Parse ``tokens`` with ``sub``, raising :class:`CliError` instead of exiting."""
    def error(message):
        raise CliError(message)

    sub.error = error
    try:
        sub.parse_args(tokens)
    finally:
        del sub.error


def parse_args(argv=None) -> TrainConfig:
    """Parse ``argv`` (default ``sys.argv[1:]``), applying ``--config`` under the explicit flags.

    The file's values become tokens placed right after the sub-command, before the explicit flags (which
    therefore win), and go through the same types and choices; an error names the file and the flag.
    Returns the run's :class:`TrainConfig`; a combination it refuses is a :class:`CliError`.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.config:
        sub = parser._subparsers._group_actions[0].choices[args.command]
        try:
            tokens = _config_tokens(sub, _load_config(args.config), args.config)
            _strict_parse(sub, tokens)
        except CliError as e:
            sub.error(str(e) if str(e).startswith("--config") else f"--config {args.config}: {e}")
        at = argv.index(args.command) + 1
        args = parser.parse_args(argv[:at] + tokens + argv[at:])
    try:
        return TrainConfig.from_namespace(args)
    except ValueError as e:
        raise CliError(str(e), args.command) from None


def validate(cfg: TrainConfig) -> None:
    """Usage errors that must surface before any model is built or data is read."""
    models = clipfast.list_models()
    if cfg.model not in models and not Path(cfg.model).is_file():
        raise CliError(f"--model: unknown model {cfg.model!r}; choose one of: {', '.join(models)}")
    files = [("pretrained", cfg.pretrained)]
    if cfg.resume not in (None, "latest"):
        files.append(("resume", cfg.resume))
    for flag, value in files:
        if value and not Path(value).is_file():
            raise CliError(f"--{flag}: checkpoint {value!r} does not exist")
        if value and Path(value).stat().st_size == 0:
            raise CliError(f"--{flag}: checkpoint {value!r} is empty (0 bytes): an interrupted copy or write?")
    for flag, value in (("--train-data", cfg.train_data), ("--val-data", cfg.val_data)):
        if value and cfg.dataset_type in ("csv", "folder", "auto") and not Path(value).exists():
            raise CliError(f"{flag}: {value!r} does not exist")
        if value and cfg.dataset_type == "webdataset":
            missing = [s for s in expand_shards(value) if "://" not in s and not Path(s).exists()]
            if missing:
                raise CliError(f"{flag}: {len(missing)} shard(s) do not exist, e.g. {missing[0]!r}")
    if cfg.command == "train":
        if cfg.dataset_type in ("csv", "folder", "webdataset", "auto") and not cfg.train_data:
            raise CliError(f"--train-data is required with --dataset-type {cfg.dataset_type}")
        if cfg.dataset_type == "webdataset" and not cfg.train_num_samples:
            raise CliError("--train-num-samples is required with --dataset-type webdataset")


def main(argv=None) -> int:
    """Entry point of the ``clipfast`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own flags: clipfast.train.bench
        return bench.main(argv[1:])
    try:
        cfg = parse_args(argv)
    except CliError as e:
        print(f"clipfast {e.command}: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, str(cfg.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if cfg.list_models:
        print("\n".join(clipfast.list_models()))
        return 0
    try:
        validate(cfg)
    except CliError as e:
        print(f"clipfast {cfg.command}: error: {e}", file=sys.stderr)
        return 2
    try:
        return run.run_train(cfg) if cfg.command == "train" else run.run_eval(cfg)
    except RunError as e:
        print(f"clipfast {cfg.command}: error: {e}", file=sys.stderr)
        return e.exit_status


if __name__ == "__main__":
    sys.exit(main())
