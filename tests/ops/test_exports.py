"""``clipfast.ops`` exports every op (one file per op) with its PyTorch reference."""
import importlib
import pkgutil

import clipfast.ops


def test_every_op_module_exports_its_op_and_reference():
    stems = [m.name for m in pkgutil.iter_modules(clipfast.ops.__path__) if not m.name.startswith("_")]
    assert {"attention", "contrastive_loss", "sigmoid_loss", "quick_gelu", "fused_adam"} <= set(stems)
    for stem in stems:
        module = importlib.import_module(f"clipfast.ops.{stem}")
        for name in (stem, f"{stem}_ref"):
            assert getattr(clipfast.ops, name, None) is getattr(module, name), f"clipfast.ops.{name} not exported"
