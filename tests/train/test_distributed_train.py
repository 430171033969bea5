"""2-process gloo data parallelism (torch.distributed.run) equals one process on the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]
MODES = "gather_with_grad,local_loss,accum2,fsdp,ring,ddp_clipfast_adamw,fsdp_clipfast_adamw"


def _run(cmd, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore::FutureWarning")
    proc = subprocess.run(cmd + ["--out", str(out)], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_process_gloo_equals_single_process(tmp_path):
    """Per-rank batch 4 on 2 ranks vs batch 8 alone: DDP (gather-with-grad, local loss, accum 2, ring loss), FSDP2;
    DDP and FSDP2 with clipfast.optim.AdamW (fp32 state: torch's AdamW steps to fp32 rounding)."""
    single = _run([sys.executable, str(WORKER), "--batch-size", "8", "--modes", "gather_with_grad"], tmp_path / "one.json")
    multi = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER),
                  "--batch-size", "4", "--modes", MODES], tmp_path / "two.json")
    expected = single["gather_with_grad"]
    assert len(expected) == 6
    for mode in MODES.split(","):
        got = multi[mode]
        assert len(got) == len(expected), mode
        for step, (g, e) in enumerate(zip(got, expected)):
            assert g == pytest.approx(e, abs=1e-5, rel=1e-5), f"{mode} step {step + 1}: {g} vs {e}"
        # checkpoints hold full, unsharded tensors with OpenCLIP's shapes (0-d logit_scale) in every mode
        assert multi[mode + "/state_dict_shapes"] == single["gather_with_grad/state_dict_shapes"], mode
