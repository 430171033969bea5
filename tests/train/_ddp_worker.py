"""Worker for test_distributed_train: run under torch.distributed.run (2 procs) or alone (world 1).

Trains the tiny CLIP for a few steps in each requested mode and writes, on rank 0, a JSON
``{mode: [mean loss over ranks per step]}`` to ``--out``. Alone, ``--batch-size`` is the global batch.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clipfast.train.distributed import all_reduce_mean, full_state_dicts, init_distributed, wrap_model  # noqa: E402
from clipfast.train.trainer import Trainer  # noqa: E402
from tests._spawn import leave_worker  # noqa: E402
from tests.train._train_utils import RandomPairs, clip_loss, tiny_clip, train_args  # noqa: E402

MODES = {
    "gather_with_grad": dict(gather_with_grad=True),
    "local_loss": dict(gather_with_grad=True, local_loss=True),
    "accum2": dict(gather_with_grad=True, accum=2),
    "fsdp": dict(gather_with_grad=True, fsdp=True),
    "ring": dict(mode="ring"),
    "ddp_clipfast_adamw": dict(gather_with_grad=True, optimizer="clipfast-adamw"),
    "fsdp_clipfast_adamw": dict(gather_with_grad=True, fsdp=True, optimizer="clipfast-adamw"),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--modes", default="gather_with_grad,local_loss")
    a = p.parse_args()
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    results = {}
    for mode in a.modes.split(","):
        cfg = MODES[mode]
        torch.manual_seed(0)
        model = tiny_clip()
        wrapped = wrap_model(model, info, mode="fsdp" if cfg.get("fsdp") else "ddp")
        accum = cfg.get("accum", 1)
        kw = {"mode": cfg["mode"]} if "mode" in cfg else {}
        loss = clip_loss(local_loss=cfg.get("local_loss", False), gather_with_grad=cfg.get("gather_with_grad", False),
                         rank=info.rank, world_size=info.world_size, **kw)
        data = RandomPairs(48).train_data(a.batch_size // accum, info.rank, info.world_size)
        opt = {"optimizer": cfg["optimizer"]} if "optimizer" in cfg else {}  # clipfast.optim.AdamW, fp32 state
        trainer = Trainer(train_args(epochs=1, accum_freq=accum, grad_clip_norm=1.0, **opt), wrapped, loss, data, info=info)
        losses = []
        trainer.add_callback(lambda t, s, losses=losses: losses.append(all_reduce_mean(s["loss"]).item()))
        trainer.fit()
        results[mode] = losses
        model_sd, _ = full_state_dicts(wrapped, trainer.optimizer)  # collective under FSDP
        results[mode + "/state_dict_shapes"] = {k: list(v.shape) for k, v in model_sd.items() if k in ("logit_scale", "visual.proj")}
    if info.is_master:
        Path(a.out).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
    leave_worker()  # results are on disk
