"""The loop: precision modes, exact accumulation, clamp, clipping, lr schedule, weight-decay groups, resume."""
import copy
import math

import pytest
import torch

from clipfast.train.params import exclude_from_weight_decay, param_groups
from clipfast.train.schedule import WarmupCosine, lr_at
from clipfast.train.trainer import Trainer
from tests.numerics import assert_close
from tests.train._train_utils import RandomPairs, clip_loss, fit_recording_losses, tiny_clip, train_args


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 1.0, 4, 10) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 10) == pytest.approx(1.0)
    assert lr_at(4, 1.0, 4, 10) == pytest.approx(1.0)
    assert lr_at(7, 1.0, 4, 10) == pytest.approx(0.5)
    assert lr_at(10, 1.0, 4, 10) == pytest.approx(0.0)
    assert lr_at(8, 1.0, 4, 10, "const") == 1.0
    assert lr_at(0, 1.0, 0, 10) == 1.0
    with pytest.raises(ValueError, match="kind"):
        lr_at(0, 1.0, 0, 10, "linear")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    assert WarmupCosine(opt, 2.0, 2, 10)(0) == pytest.approx(1.0) and opt.param_groups[0]["lr"] == pytest.approx(1.0)


def test_weight_decay_groups_follow_openclip():
    model = tiny_clip()
    no_decay, decay = param_groups(model, 0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    for name in ("logit_scale", "ln_final.weight", "visual.class_embedding", "visual.ln_pre.bias"):
        assert name in no_decay["names"], name
    for name in ("visual.conv1.weight", "visual.proj", "text_projection", "positional_embedding"):
        assert name in decay["names"], name
    _, decay_emb = param_groups(model, 0.2, exclude_embeddings=True)
    assert "positional_embedding" not in decay_emb["names"] and "token_embedding.weight" not in decay_emb["names"]
    assert exclude_from_weight_decay("x.bias", torch.zeros(2, 2)) and not exclude_from_weight_decay("x.weight", torch.zeros(2, 2))
    assert len(no_decay["params"]) + len(decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("precision", ["fp32", "amp", "amp_bf16", "bf16", "fp16", "pure_bf16", "pure_fp16"])
def test_precision_modes_train_a_few_steps(precision):
    model = tiny_clip(precision)
    before = copy.deepcopy(model.state_dict())
    data = RandomPairs(32)
    trainer = Trainer(train_args(precision=precision, epochs=1, grad_clip_norm=1.0), model, clip_loss(), data.train_data(8))
    losses = []
    trainer.add_callback(lambda t, s: losses.append(s["loss"].item()))
    summary = trainer.fit()
    assert summary["steps"] == 4 and len(losses) == 4
    assert all(math.isfinite(x) for x in losses)
    assert (trainer.scaler is not None) == (precision == "amp")
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "visual.conv1.weight" in changed and "text_projection" in changed


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("accum", [2, 4])
def test_accumulation_equals_full_batch_step(accum):
    model_a = tiny_clip()
    model_b = copy.deepcopy(model_a)
    data = RandomPairs(32)
    micro = list(data.batches(8 // accum * 2, 0))[:accum]  # accum micro-batches of 16/accum rows
    full = (torch.cat([m[0] for m in micro]), torch.cat([m[1] for m in micro]))
    t_acc = Trainer(train_args(accum_freq=accum), model_a, clip_loss(), data.train_data(16 // accum))
    t_full = Trainer(train_args(), model_b, clip_loss(), data.train_data(16))
    for _ in range(2):  # second step: from updated weights and Adam state
        s_acc, s_full = t_acc.train_step(micro), t_full.train_step([full])
        assert_close(s_acc["loss"], s_full["loss"], name="loss")
        ga, gf = _grads(model_a), _grads(model_b)
        assert ga.keys() == gf.keys() and "logit_scale" in ga
        # In units of the largest gradient: some (attention key biases) are 0 in exact math, fp32 noise here.
        scale = max(g.abs().max() for g in gf.values())
        for name in gf:
            assert_close(ga[name] / scale, gf[name] / scale, name=f"grad {name}")


def test_logit_scale_clamped_and_grad_clipped():
    model = tiny_clip()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    data = RandomPairs(16)
    trainer = Trainer(train_args(grad_clip_norm=1e-3, lr=1e-2, warmup=0), model, clip_loss(), data.train_data(8))
    trainer.train_step([next(data.batches(8, 0))])
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-3)


def test_accum_larger_than_epoch_is_an_error():
    with pytest.raises(ValueError, match="accum_freq"):
        Trainer(train_args(accum_freq=8), tiny_clip(), clip_loss(), RandomPairs(16).train_data(4))


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_reproduces_the_uninterrupted_losses(tmp_path, accum):
    """8 steps straight vs stop after 5 (mid-epoch 1) + resume from latest.pt: same losses, same weights."""
    data = RandomPairs(32 * accum, noise=True)
    args = train_args(accum_freq=accum, epochs=2, precision="fp32")

    def run(run_dir, stop_at=None, resume=None):
        torch.manual_seed(0)
        model = tiny_clip()
        trainer = Trainer(args, model, clip_loss(), data.train_data(8), run_dir=run_dir)
        return (*fit_recording_losses(trainer, resume, stop_at), model)

    _, straight, model_straight = run(tmp_path / "a")
    summary, first, _ = run(tmp_path / "b", stop_at=5)
    assert summary["interrupted"] == -1 and max(first) == 5
    latest = tmp_path / "b" / "checkpoints" / "latest.pt"
    _, second, model_resumed = run(tmp_path / "b", resume=latest)
    assert sorted(second) == [6, 7, 8]
    for step in range(1, 9):
        got = first[step] if step <= 5 else second[step]
        assert got == pytest.approx(straight[step], rel=1e-6, abs=1e-6), f"step {step}"
    for (name, pa), pb in zip(model_straight.named_parameters(), model_resumed.parameters()):
        assert_close(pb, pa, name=name)
    import json
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_grad_checkpointing_gives_the_same_step():
    model_a = tiny_clip()
    model_b = copy.deepcopy(model_a)
    model_b.set_grad_checkpointing(True)
    data = RandomPairs(16)
    batch = [next(data.batches(8, 0))]
    s_a = Trainer(train_args(), model_a, clip_loss(), data.train_data(8)).train_step(batch)
    s_b = Trainer(train_args(), model_b, clip_loss(), data.train_data(8)).train_step(batch)
    assert_close(s_b["loss"], s_a["loss"], name="loss")
    ga, gb = _grads(model_a), _grads(model_b)
    scale = max(g.abs().max() for g in ga.values())
    for name in ga:
        assert_close(gb[name] / scale, ga[name] / scale, name=f"grad {name}")
