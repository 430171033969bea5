"""Small stand-ins shared by the trainer tests: a tiny CLIP, a deterministic in-memory loader, a config."""
import torch

from clipfast.train.config import TrainConfig

IMAGE_SIZE, CONTEXT, VOCAB = 16, 8, 100


def tiny_clip(precision="fp32"):
    """clipfast's CLIP, 2 layers per tower at 16x16, output_dict=True, in ``precision``."""
    from clipfast.model import CLIP
    from clipfast.precision import get_cast_dtype, set_model_precision

    return set_model_precision(CLIP(32, dict(image_size=IMAGE_SIZE, layers=2, width=32, patch_size=8, head_width=16),
                dict(context_length=CONTEXT, vocab_size=VOCAB, width=32, heads=2, layers=2), output_dict=True,
                                    cast_dtype=get_cast_dtype(precision)), precision)


def clip_loss(**kw):
    from clipfast import ClipLoss

    return ClipLoss(**kw)


class RandomPairs:
    """N random (image, text) pairs; epoch e's order is a permutation seeded by e.

    ``noise=True`` adds augmentation noise drawn from the global torch RNG per batch, so resume
    exactness also proves the RNG state is restored.
    """

    def __init__(self, n=64, seed=1, noise=False):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        self.texts = torch.randint(0, VOCAB, (n, CONTEXT), generator=g)
        self.n, self.noise = n, noise

    def batches(self, batch_size, epoch, skip=0, rank=0, world_size=1):
        """Global batch i = rows [i*B*W, (i+1)*B*W) of the epoch's order; rank r takes its B-slice."""
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(1000 + epoch))
        per_global = batch_size * world_size
        for i in range(skip, self.n // per_global):
            idx = order[i * per_global + rank * batch_size:i * per_global + (rank + 1) * batch_size]
            images = self.images[idx]
            if self.noise:
                images = images + 0.01 * torch.randn_like(images)
            yield images, self.texts[idx]

    def train_data(self, batch_size, rank=0, world_size=1):
        from clipfast.train.trainer import TrainData

        return TrainData(lambda epoch, skip: self.batches(batch_size, epoch, skip, rank, world_size),
                         self.n // (batch_size * world_size), batch_size)


def train_args(**overrides) -> TrainConfig:
    args = dict(accum_freq=1, epochs=2, lr=1e-3, wd=0.1, beta1=0.9, beta2=0.98, eps=1e-6, warmup=2,
                precision="fp32", grad_clip_norm=None, log_every_n_steps=1, name="test", zeroshot_frequency=0,
                save_frequency=1, save_every_n_steps=0, keep_last=0, no_progress=True, lr_scheduler="cosine")
    args.update(overrides)
    return TrainConfig(**args)


def fit_recording_losses(trainer, resume=None, stop_at=None) -> tuple:
    """``trainer.fit()`` after resuming from ``resume`` (if given), requesting a stop after step ``stop_at``
    (if given). Returns ``(summary, {step: loss})``."""
    if resume:
        trainer.resume(resume)
    losses = {}
    trainer.add_callback(lambda t, s: losses.__setitem__(t.step, s["loss"].item()))
    if stop_at:
        trainer.add_callback(lambda t, s: t.step == stop_at and t.request_stop())
    return trainer.fit(), losses
