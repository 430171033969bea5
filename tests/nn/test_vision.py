"""clipfast.nn.vision: VisionTransformer and PatchDropout against OpenCLIP's."""
import open_clip
import pytest
import torch

from clipfast.nn.vision import PatchDropout, VisionTransformer
from tests.numerics import assert_close


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")


@pytest.mark.parametrize("image_size,patch_size", [(32, 4), ((48, 32), 8)])
def test_vit_matches_open_clip(image_size, patch_size):
    kwargs = dict(image_size=image_size, patch_size=patch_size, width=48, layers=2, heads=3, mlp_ratio=4.0,
                  output_dim=24)
    ref = open_clip.transformer.VisionTransformer(**kwargs)
    ours = VisionTransformer(**kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert ours.grid_size == ref.grid_size and ours.image_size == ref.image_size
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = torch.randn(2, 3, *size)
    assert_close(ours(x), ref(x), name="vit")


def test_patch_dropout_same_tokens_as_open_clip_and_identity_in_eval():
    x = torch.randn(4, 50, 8)
    ref, ours = open_clip.transformer.PatchDropout(0.5), PatchDropout(0.5)
    torch.manual_seed(1)
    want = ref(x)
    torch.manual_seed(1)
    got = ours(x)
    assert got.shape == (4, 25, 8) and torch.equal(got, want)
    assert torch.equal(got[:, 0], x[:, 0])  # class token kept
    ours.eval()
    assert ours(x) is x
    with pytest.raises(ValueError, match="prob"):
        PatchDropout(1.0)
