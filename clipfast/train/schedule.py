"""Learning-rate schedules: linear warmup, then cosine (or constant) decay, as in open_clip_train.

The lr is a pure function of the optimizer step, so a resumed run needs only the step to continue
exactly; nothing here has state to checkpoint.

    warmup (step < W):  lr = base_lr * (step + 1) / W
    cosine (step >= W): lr = 0.5 * (1 + cos(pi * (step - W) / (T - W))) * base_lr
    const  (step >= W): lr = base_lr

with W = ``warmup`` and T = ``total_steps`` optimizer steps (micro-batches / accum_freq).
"""
import math

SCHEDULES = ("cosine", "const")


def lr_at(step: int, base_lr: float, warmup: int, total_steps: int, kind: str = "cosine") -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    Args:
        step: optimizer step, 0-based.
        base_lr: peak learning rate reached at the end of warmup.
        warmup: number of linear-warmup steps (0 for none).
        total_steps: total optimizer steps of the run; cosine reaches 0 there.
        kind: ``"cosine"`` or ``"const"``.
    Returns:
        the learning rate (float).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")
    if warmup < 0 or total_steps < 0:
        raise ValueError(f"warmup and total_steps must be >= 0, got {warmup} and {total_steps}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if kind == "const":
        return base_lr
    span = max(total_steps - warmup, 1)
    progress = min(step - warmup, span) / span
    return 0.5 * (1.0 + math.cos(math.pi * progress)) * base_lr


class WarmupCosine:
    """Callable that sets every param group's lr for a step: ``sched(step) -> lr``.

    Groups keep their own lr ratio through ``group["lr_scale"]`` (default 1).
    """

    def __init__(self, optimizer, base_lr: float, warmup: int, total_steps: int, kind: str = "cosine"):
        lr_at(0, base_lr, warmup, total_steps, kind)  # validates the arguments
        self.optimizer, self.base_lr, self.warmup, self.total_steps, self.kind = optimizer, base_lr, warmup, total_steps, kind

    def __call__(self, step: int) -> float:
        lr = lr_at(step, self.base_lr, self.warmup, self.total_steps, self.kind)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr
