"""Values refused before any work: flag ranges (argparse types), --config through the same parser."""
import json

import pytest

from clipfast.train.cli import main, parse_args


def _err(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("flag, value, expected", [
    ("--grad-clip-norm", "-1", "> 0"),
    ("--grad-clip-norm", "0", "> 0"),
    ("--lr", "0", "> 0"),
    ("--lr", "-1e-3", "> 0"),
    ("--lr", "nan", "finite"),
    ("--lr", "inf", "finite"),
    ("--beta1", "1", "[0, 1)"),
    ("--beta1", "-0.1", "[0, 1)"),
    ("--beta2", "1.5", "[0, 1)"),
    ("--eps", "0", "> 0"),
    ("--wd", "-0.1", ">= 0"),
    ("--workers", "-1", ">= 0"),
    ("--train-num-samples", "0", ">= 1"),
    ("--val-num-samples", "0", ">= 1"),
    ("--force-image-size", "0", ">= 1"),
    ("--force-context-length", "0", ">= 1"),
    ("--epochs", "2.5", "integer"),
    ("--epochs", "0", ">= 1"),
    ("--batch-size", "0", ">= 1"),
    ("--accum-freq", "0", ">= 1"),
    ("--warmup", "-1", ">= 0"),
    ("--zeroshot-frequency", "-1", ">= 0"),
    ("--save-frequency", "-2", ">= 0"),
    ("--save-every-n-steps", "-1", ">= 0"),
    ("--keep-last", "-1", ">= 0"),
    ("--log-every-n-steps", "0", ">= 1"),
    ("--seed", "-1", "[0, 2147483647]"),
    ("--max-bad-sample-fraction", "1.5", "[0, 1]"),
    ("--bad-sample-window", "0", ">= 1"),
])
def test_bad_numeric_flag_is_refused_naming_flag_and_range(capsys, flag, value, expected):
    err = _err(capsys, ["train", f"{flag}={value}"])  # "=": argparse takes "-1e-3" for an option otherwise
    assert flag in err and expected in err and value in err, err


def test_good_values_pass_through_unchanged():
    args = parse_args(["train", "--lr", "1e-3", "--beta1", "0", "--beta2", "0.999", "--eps", "1e-8", "--wd", "0",
                       "--grad-clip-norm", "1.5", "--workers", "0", "--epochs", "3", "--zeroshot-frequency", "0"])
    assert (args.lr, args.beta1, args.beta2, args.eps, args.wd, args.grad_clip_norm, args.workers, args.epochs) == \
        (1e-3, 0.0, 0.999, 1e-8, 0.0, 1.5, 0, 3)
    assert isinstance(args.epochs, int) and isinstance(args.lr, float)


@pytest.mark.parametrize("cfg, flag", [
    ({"grad-clip-norm": -1}, "--grad-clip-norm"),
    ({"epochs": 2.5}, "--epochs"),
    ({"lr": "fast"}, "--lr"),
    ({"precision": "fp8"}, "--precision"),          # choices apply to the file too
    ({"dataset_type": "parquet"}, "--dataset-type"),
    ({"local-loss": "yes"}, "--local-loss"),        # a switch takes true/false
    ({"batch-size": [1, 2]}, "--batch-size"),
])
def test_config_values_go_through_the_same_checks(tmp_path, capsys, cfg, flag):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    err = _err(capsys, ["train", "--config", str(path)])
    assert flag in err and "run.json" in err, err


def test_config_yaml_types_and_switches(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 5e-4\nepochs: 3\nlocal-loss: false\ngather_with_grad: true\ngrad-clip-norm: null\n"
                    "csv-separator: '-'\n")
    args = parse_args(["train", "--config", str(path), "--epochs", "4"])
    assert args.lr == 5e-4 and isinstance(args.lr, float)  # YAML 1.1 reads 5e-4 as a string: argparse converts it
    assert (args.epochs, args.local_loss, args.gather_with_grad, args.grad_clip_norm) == (4, False, True, None)
    assert args.csv_separator == "-"


@pytest.mark.parametrize("value", [True, False])
def test_config_sets_a_negatable_switch_both_ways(tmp_path, value):
    """``--[no-]opt-stochastic-rounding`` (BooleanOptionalAction) from a file, either value."""
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"optimizer": "clipfast-adamw", "opt-stochastic-rounding": value}))
    assert parse_args(["train", "--config", str(path)]).opt_stochastic_rounding is value


def test_bad_value_fails_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "tiny-vit", "--logs", str(tmp_path), "--grad-clip-norm", "-1"])
    assert exc.value.code == 2 and "--grad-clip-norm" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flag", ["--pretrained", "--resume"])
def test_missing_or_empty_checkpoint_flags_fail_before_any_work(tmp_path, capsys, flag):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for value, why in ((str(tmp_path / "none.pt"), "does not exist"), (str(empty), "empty")):
        logs = tmp_path / "logs"
        assert main(["train", "--model", "tiny-vit", "--logs", str(logs), flag, value]) == 2
        err = capsys.readouterr().err
        assert flag in err and value in err and why in err, err
        assert not logs.exists()
