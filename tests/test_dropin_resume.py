"""Training checkpoints across clipfast and OpenCLIP 3.3, both directions: model, AdamW moments, epoch/step.

"Same moments" = after one more step from the resumed state on the same batch, every ``exp_avg`` / ``exp_avg_sq``
equals the one OpenCLIP's own resume gives (or clipfast's own, for the other direction) to 1e-5 relative (norm of
the difference per tensor, with a floor of 1e-6 x the largest entry of that moment kind over the model: the
attention key biases have a mathematically zero gradient, so their moments are fp32 noise in both libraries).
"""

import open_clip
import pytest
import torch

import clipfast
from clipfast.train.compat import align_optimizer_state, to_open_clip_checkpoint
from clipfast.train.trainer import Trainer
from tests.train._train_utils import CONTEXT, IMAGE_SIZE, VOCAB, RandomPairs, train_args

CFG = dict(embed_dim=32, vision_cfg=dict(image_size=IMAGE_SIZE, layers=2, width=32, patch_size=8, head_width=16),
           text_cfg=dict(context_length=CONTEXT, vocab_size=VOCAB, width=32, heads=2, layers=2))
RTOL = 1e-5


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")


def open_clip_optimizer(model, lr=1e-3, wd=0.1):
    """Exactly ``open_clip_train/main.py``'s AdamW groups."""
    def exclude(n, p):
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = list(model.named_parameters())
    gain_or_bias = [p for n, p in named if exclude(n, p) and p.requires_grad]
    rest = [p for n, p in named if not exclude(n, p) and p.requires_grad]
    return torch.optim.AdamW([{"params": gain_or_bias, "weight_decay": 0.0}, {"params": rest, "weight_decay": wd}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


def open_clip_step(model, optimizer, batch):
    """One step of ``open_clip_train.train.train_one_epoch`` (fp32, accum 1, no clipping)."""
    loss_fn = open_clip.ClipLoss()
    images, texts = batch
    optimizer.zero_grad()
    losses = loss_fn(**model(images, texts), output_dict=True)
    sum(losses.values()).backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, 4.6052)


def open_clip_resume(path):
    """``open_clip_train/main.py``'s resume branch on a fresh OpenCLIP model + optimizer."""
    model = open_clip.model.CLIP(**CFG, output_dict=True)
    optimizer = open_clip_optimizer(model)
    checkpoint = torch.load(path, map_location="cpu")
    assert "epoch" in checkpoint
    sd = checkpoint["state_dict"]
    if next(iter(sd)).startswith("module"):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    model.load_state_dict(sd)
    optimizer.load_state_dict(checkpoint["optimizer"])
    return model, optimizer, checkpoint["epoch"]


def moments(optimizer, model):
    """name -> {exp_avg, exp_avg_sq, step} of every parameter with state."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: {k: v.detach().clone() for k, v in optimizer.state[p].items()}
            for g in optimizer.param_groups for p in g["params"] if p in optimizer.state}


def assert_same_moments(ours, ref):
    assert ours.keys() == ref.keys() and len(ref) > 0
    for key in ("exp_avg", "exp_avg_sq"):
        scale = max(s[key].abs().max().item() for s in ref.values())
        for name, s in ref.items():
            err = (ours[name][key] - s[key]).norm().item()
            assert err <= RTOL * s[key].norm().item() + 1e-6 * scale, f"{name}.{key}: rel err {err / s[key].norm():.2e}"
    for name, s in ref.items():
        assert ours[name]["step"].item() == s["step"].item(), name


def clipfast_trainer(run_dir=None, epochs=2):
    model = clipfast.CLIP(**CFG, output_dict=True)
    return Trainer(train_args(epochs=epochs, warmup=0), model, clipfast.ClipLoss(), RandomPairs(32).train_data(8),
                   run_dir=run_dir)


def test_open_clip_checkpoint_resumes_in_clipfast_with_the_same_moments(tmp_path):
    torch.manual_seed(0)
    data = RandomPairs(32)
    batches = list(data.batches(8, 0))
    model = open_clip.model.CLIP(**CFG, output_dict=True)
    optimizer = open_clip_optimizer(model)
    for batch in batches[:2]:
        open_clip_step(model, optimizer, batch)
    path = tmp_path / "epoch_1.pt"  # what open_clip_train writes after an epoch
    torch.save({"epoch": 1, "name": "oc", "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}, path)

    ref_model, ref_opt, _ = open_clip_resume(path)
    open_clip_step(ref_model, ref_opt, batches[2])

    trainer = clipfast_trainer()
    trainer.resume(path)  # was KeyError: 'step'
    assert (trainer.epoch, trainer.step, trainer.batch_in_epoch) == (1, trainer.steps_per_epoch, 0)
    saved = torch.load(path)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in trainer.model.state_dict().items())
    trainer.train_step([batches[2]])
    # (Weights after the step are not compared: Adam turns the fp32 noise of zero-gradient key biases into
    # lr-sized steps in both libraries.)
    assert_same_moments(moments(trainer.optimizer, trainer.model), moments(ref_opt, ref_model))


def test_clipfast_checkpoint_resumes_in_open_clip_with_the_same_moments(tmp_path):
    torch.manual_seed(0)
    trainer = clipfast_trainer(tmp_path, epochs=1)
    trainer.fit()
    path = tmp_path / "checkpoints" / "epoch_1.pt"
    batch = next(iter(RandomPairs(32, seed=3).batches(8, 0)))

    ours = clipfast_trainer(epochs=2)
    ours.resume(path)
    ours.train_step([batch])

    ref_model, ref_opt, epoch = open_clip_resume(path)  # the clipfast file, as is
    assert epoch == 1
    open_clip_step(ref_model, ref_opt, batch)
    assert_same_moments(moments(ours.optimizer, ours.model), moments(ref_opt, ref_model))

    converted = tmp_path / "for_open_clip.pt"
    torch.save(to_open_clip_checkpoint(torch.load(path)), converted)
    assert set(torch.load(converted)) == {"epoch", "name", "state_dict", "optimizer"}  # no scaler: fp32 run
    ref2, opt2, _ = open_clip_resume(converted)
    open_clip_step(ref2, opt2, batch)
    assert_same_moments(moments(opt2, ref2), moments(ref_opt, ref_model))


def _group_names(model):
    from clipfast.train.params import param_groups

    return [g["names"] for g in param_groups(model, 0.1)]


def _stepped(model, optimizer):
    image, text, scale = model(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE), torch.randint(0, VOCAB, (2, CONTEXT)))
    (scale * image @ text.T).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def test_optimizer_state_is_reindexed_by_name_and_shape_checked():
    model = clipfast.CLIP(**CFG)
    sd = _stepped(model, Trainer(train_args(), model, clipfast.ClipLoss(), RandomPairs(32).train_data(8)).optimizer)
    names = _group_names(model)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert len(sd["state"]) == len(shapes)
    # a checkpoint saved with another order inside the groups (as clipfast's were before it used OpenCLIP's
    # order), with the group names attached: re-indexed by name
    flipped, next_id = {"state": {}, "param_groups": []}, 0
    for g in sd["param_groups"]:
        old_ids = list(reversed(g["params"]))
        new_ids = list(range(next_id, next_id + len(old_ids)))
        next_id += len(old_ids)
        flipped["param_groups"].append({**g, "params": new_ids, "names": list(reversed(g["names"]))})
        flipped["state"].update({new: sd["state"][old] for new, old in zip(new_ids, old_ids)})
    aligned = align_optimizer_state(flipped, names, shapes)
    for i, s in sd["state"].items():
        assert torch.equal(aligned["state"][i]["exp_avg"], s["exp_avg"])
    # the same state without names (positional, as OpenCLIP's) is caught naming a parameter, instead of loading
    # silently and failing half-way through the next step
    positional = {"state": flipped["state"],
                  "param_groups": [{k: v for k, v in g.items() if k != "names"} for g in flipped["param_groups"]]}
    with pytest.raises(ValueError, match="has shape"):
        align_optimizer_state(positional, names, shapes)
    with pytest.raises(ValueError, match="parameter groups"):
        align_optimizer_state({"state": {}, "param_groups": sd["param_groups"][:1]}, names, shapes)


def test_name_keyed_fsdp_style_state_converts_for_open_clip():
    model = clipfast.CLIP(**CFG)
    sd = _stepped(model, open_clip_optimizer(model))
    flat = [n for g in _group_names(model) for n in g]
    keyed = {"state": {flat[i]: s for i, s in sd["state"].items()},
             "param_groups": [{**g, "params": [flat[i] for i in g["params"]]} for g in sd["param_groups"]]}
    out = to_open_clip_checkpoint({"epoch": 3, "state_dict": model.state_dict(), "optimizer": keyed, "scaler": None},
                                  model)
    assert out["epoch"] == 3 and "scaler" not in out
    for i, s in sd["state"].items():
        assert torch.equal(out["optimizer"]["state"][i]["exp_avg_sq"], s["exp_avg_sq"])
    with pytest.raises(ValueError, match="model="):
        to_open_clip_checkpoint({"epoch": 3, "state_dict": {}, "optimizer": keyed})
