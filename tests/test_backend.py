"""Backend selection: the order of preference, CLIPFAST_BACKEND, reasons, and a missing extension."""
import subprocess
import sys

import pytest
import torch

from clipfast import _extension, backend

CPU = torch.device("cpu")


def test_every_op_has_a_reference_and_known_backends():
    for op, names in backend.OP_BACKENDS.items():
        assert set(names) <= {"triton", "extension"}, op
        assert backend.explain(op, CPU)["reference"] == "available"


def test_interpreter_selects_triton_for_cpu_tensors(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("CLIPFAST_BACKEND", raising=False)
    assert backend.select("quick_gelu", CPU) == "triton"
    assert backend.select("attention", CPU) == "triton"
    assert backend.select("layer_norm", CPU) == "reference"  # no accelerated backend


def test_without_interpreter_cpu_never_picks_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("CLIPFAST_BACKEND", raising=False)
    assert backend.select("contrastive_loss", CPU) == "reference"
    assert "TRITON_INTERPRET" in backend.explain("contrastive_loss", CPU)["triton"]


def test_forced_backend(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")
    assert backend.select("quick_gelu", CPU) == "reference"
    for name in ("extension", "cuda"):  # "cuda": the extension's old name, still accepted
        monkeypatch.setenv("CLIPFAST_BACKEND", name)
        assert backend.forced() == "extension"
        assert backend.select("attention", CPU) == "reference"  # no extension implementation: reference
    monkeypatch.setenv("CLIPFAST_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CLIPFAST_BACKEND=triton"):
        backend.select("quick_gelu", CPU)
    monkeypatch.setenv("CLIPFAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="CLIPFAST_BACKEND"):
        backend.select("quick_gelu", CPU)


def test_unknown_op_names_the_argument():
    with pytest.raises(ValueError, match="op: unknown op 'gelu'"):
        backend.select("gelu", CPU)


def test_missing_extension_is_reported_not_raised(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("CLIPFAST_BACKEND", raising=False)
    monkeypatch.setattr(_extension, "load", lambda: None)
    monkeypatch.setattr(_extension, "_error", "ImportError: simulated")
    assert backend.select("quick_gelu", CPU) == "reference"
    assert "simulated" in backend.explain("quick_gelu", CPU)["extension"]


def test_info_runs():
    out = subprocess.run([sys.executable, "-m", "clipfast.info"], capture_output=True, text=True, check=True).stdout
    for op in backend.OP_BACKENDS:
        assert op in out
    assert "torch" in out and "extension clipfast._C" in out


def test_describe_says_where_the_cuda_backend_runs():
    assert backend.describe("extension", CPU) == "extension (clipfast._C, C++ CPU kernel)"
    assert backend.describe("extension", torch.device("cuda")) == "extension (clipfast._C, CUDA kernel)"
    assert backend.describe("triton", CPU) == "triton (interpreter)"
    assert backend.describe("reference", CPU) == "reference"
