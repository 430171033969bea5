"""Run OpenCLIP 3.3's own ``open_clip_train.main`` in this process, on clipfast or on open_clip.

    python -m tests._open_clip_train_launcher clipfast|open_clip NUM_CLASSES NUM_TEMPLATES -- <open_clip_train args>

``clipfast``: ``clipfast.install_as_open_clip()`` first, so every ``open_clip`` import of the trainer (main.py,
train.py, zero_shot.py, and main.py's lazy ``open_clip.utils`` imports) resolves to clipfast; the real open_clip
package is never imported (checked). ``open_clip``: the real package, with clipfast's ``demo-vit`` config registered
(for resuming clipfast checkpoints). The zero-shot ImageNet eval runs unchanged except that its class list and
templates are cut to the first NUM_CLASSES / NUM_TEMPLATES (1000 x 80 prompts would dominate the test's runtime),
and its ``accuracy`` is replaced by the same computation ending in ``.item()``: open_clip_train 3.3 calls ``float()``
on a 1-element NumPy array, which NumPy 2.4 rejects (an open_clip_train bug, whatever the model library).
"""
import sys
from pathlib import Path


def main(argv):
    mode, num_classes, num_templates = argv[0], int(argv[1]), int(argv[2])
    assert argv[3] == "--", argv
    if mode == "clipfast":
        import clipfast

        clipfast.install_as_open_clip()
    else:
        import open_clip

        import clipfast.configs
        open_clip.add_model_config(Path(clipfast.configs.__file__).parent / "model_configs" / "demo-vit.json")
    import open_clip_train.main as oc_main
    import open_clip_train.zero_shot as zero_shot

    def accuracy(output, target, topk=(1,)):
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() for k in topk]

    zero_shot.accuracy = accuracy
    zero_shot.IMAGENET_CLASSNAMES = zero_shot.IMAGENET_CLASSNAMES[:num_classes]
    zero_shot.OPENAI_IMAGENET_TEMPLATES = zero_shot.OPENAI_IMAGENET_TEMPLATES[:num_templates]
    if mode == "clipfast":
        import clipfast

        assert oc_main.create_model_and_transforms is clipfast.create_model_and_transforms
        assert zero_shot.build_zero_shot_classifier is clipfast.build_zero_shot_classifier
    rc = oc_main.main(argv[4:])
    if mode == "clipfast":
        assert "open_clip.coca_model" not in sys.modules, "the real open_clip package was imported"
        print("LAUNCHER: open_clip is", sys.modules["open_clip"].__name__, "; CLIP from", sys.modules["open_clip"].CLIP.__module__)
    return rc or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
