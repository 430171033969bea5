"""``TrainConfig``: every setting of a ``clipfast train`` / ``clipfast eval`` run, typed, with its default.

Built once by the CLI (``clipfast.train.cli.parse_args``: flags over ``--config``), or directly in Python
(``TrainConfig(model="ViT-B-32", batch_size=256)``); the trainer, data and evaluation read its fields and
nothing else. Field names are the flags' (``--batch-size`` -> ``batch_size``), as open_clip_train's.
The CLI's defaults are these; the choice lists live with their features (``clipfast.precision``,
``clipfast.train.data``, ``clipfast.train.schedule``, ``clipfast.loss``, ``clipfast.train.optimizer``).

Construction resolves the optimizer settings (``clipfast.train.optimizer.resolve_optimizer_args``: e.g.
``bf16_weights=True`` -> ``precision="pure_bf16"``, ``optimizer="clipfast-adamw"``,
``opt_state_dtype="bfloat16"``) and checks every choice, raising ``ValueError`` naming the flag.
``precision="auto"`` is resolved per device when the run starts.
"""
import dataclasses
from dataclasses import dataclass
from typing import Optional

from clipfast.loss import MODES as LOSS_MODES
from clipfast.precision import PRECISIONS as MODEL_PRECISIONS
from clipfast.train.data import DATASET_TYPES
from clipfast.train.optimizer import resolve_optimizer_args
from clipfast.train.schedule import SCHEDULES

__all__ = ["TrainConfig", "PRECISIONS"]

PRECISIONS = ("auto",) + MODEL_PRECISIONS  # auto: amp_bf16 on CUDA, fp32 elsewhere


@dataclass
class TrainConfig:
    command: str = "train"  # train | eval
    # model
    model: str = "demo-vit"
    pretrained: Optional[str] = None
    precision: str = "auto"
    force_context_length: Optional[int] = None
    force_image_size: Optional[int] = None
    force_quick_gelu: bool = False
    list_models: bool = False
    # data
    dataset_type: str = "shapes"
    train_data: Optional[str] = None
    val_data: Optional[str] = None
    train_num_samples: Optional[int] = None
    val_num_samples: Optional[int] = None
    csv_separator: str = "\t"
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    workers: int = 1
    batch_size: int = 64
    max_bad_sample_fraction: float = 0.5
    bad_sample_window: int = 1000
    # run
    device: str = "auto"
    seed: int = 0
    logs: str = "./logs"
    name: Optional[str] = None
    log_level: str = "INFO"
    config: Optional[str] = None
    # optimization
    epochs: int = 10
    lr: float = 5e-4
    wd: float = 0.2
    wd_exclude_embeddings: bool = False
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    optimizer: Optional[str] = None  # resolved: adamw | clipfast-adamw
    opt_state_dtype: Optional[str] = None  # resolved: float32 | bfloat16 | float16
    opt_stochastic_rounding: Optional[bool] = None  # resolved: on with clipfast-adamw
    opt_master_weights: bool = False
    bf16_weights: bool = False
    warmup: int = 100
    lr_scheduler: str = "cosine"
    accum_freq: int = 1
    grad_clip_norm: Optional[float] = None
    grad_checkpointing: bool = False
    torchcompile: bool = False
    # loss and distributed
    local_loss: bool = False
    gather_with_grad: bool = False
    loss_mode: str = "gather"
    fsdp: bool = False
    ddp_static_graph: bool = False
    # evaluation, checkpoints, logging
    zeroshot_frequency: int = 1
    save_frequency: int = 1
    save_every_n_steps: int = 0
    keep_last: int = 0
    resume: Optional[str] = None
    log_every_n_steps: int = 10
    no_progress: bool = False
    no_plots: bool = False

    def __post_init__(self):
        for name, value, choices in (("--precision", self.precision, PRECISIONS),
                                     ("--dataset-type", self.dataset_type, DATASET_TYPES),
                                     ("--lr-scheduler", self.lr_scheduler, SCHEDULES),
                                     ("--loss-mode", self.loss_mode, LOSS_MODES)):
            if value not in choices:
                raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
        resolve_optimizer_args(self)

    @classmethod
    def from_namespace(cls, namespace) -> "TrainConfig":
        """From an argparse namespace (``clipfast eval``'s lacks the training flags: they keep their defaults)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = vars(namespace)
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"TrainConfig has no settings {unknown}")
        return cls(**values)

    def to_dict(self) -> dict:
        """The settings as a JSON-able dict (``args.json``, checkpoints)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes`` (checked and resolved again)."""
        return dataclasses.replace(self, **changes)
