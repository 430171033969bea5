"""clipfast.train.config.TrainConfig: one typed config, the CLI's flags and defaults, checked choices."""
import argparse
import dataclasses

import pytest

from clipfast.train.cli import build_parser, parse_args
from clipfast.train.config import TrainConfig


def _flags(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return {a.dest: a for a in sub._actions if a.option_strings and a.dest != "help"}


def test_every_flag_is_a_field_with_the_same_default():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    flags = _flags("train")
    assert set(flags) == set(fields) - {"command"}
    for dest, action in flags.items():
        assert action.default == fields[dest].default, dest
    assert set(_flags("eval")) < set(flags)


def test_cli_builds_a_resolved_config_for_both_commands():
    cfg = parse_args(["train", "--batch-size", "32", "--bf16-weights"])
    assert isinstance(cfg, TrainConfig) and cfg.command == "train" and cfg.batch_size == 32
    assert (cfg.precision, cfg.optimizer, cfg.opt_state_dtype) == ("pure_bf16", "clipfast-adamw", "bfloat16")
    ev = parse_args(["eval", "--model", "tiny-vit"])
    assert ev.command == "eval" and ev.resume is None and ev.epochs == TrainConfig.epochs  # training flags: defaults
    assert TrainConfig(**ev.to_dict()) == ev  # to_dict round-trips


@pytest.mark.parametrize("kwargs, match", [
    (dict(precision="fp8"), "--precision: expected one of"),
    (dict(dataset_type="parquet"), "--dataset-type: expected one of"),
    (dict(lr_scheduler="step"), "--lr-scheduler: expected one of"),
    (dict(loss_mode="all"), "--loss-mode: expected one of"),
    (dict(optimizer="sgd"), "--optimizer: expected one of"),
    (dict(opt_state_dtype="bfloat16"), "--opt-state-dtype: needs --optimizer clipfast-adamw"),
])
def test_bad_settings_name_the_flag(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_from_namespace_refuses_unknown_settings():
    with pytest.raises(ValueError, match=r"no settings \['lr_warmup'\]"):
        TrainConfig.from_namespace(argparse.Namespace(lr_warmup=3))
    assert TrainConfig.from_namespace(argparse.Namespace(lr=0.1)).lr == 0.1


def test_replace_resolves_again():
    cfg = TrainConfig(bf16_weights=True)
    assert cfg.replace(precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match="--bf16-weights: needs --precision bf16"):
        cfg.replace(precision="amp")
