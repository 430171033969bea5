"""Named benchmark shapes, in two sets: ``cpu`` (each case runs in seconds on 2 cores) and ``gpu`` (CLIP's real
training shapes). The set in use is ``CLIPFAST_BENCH_SHAPES`` (``cpu`` or ``gpu``), by default ``gpu`` when CUDA
is available, else ``cpu``; the module-level names (``QUICK_GELU``, ...) are that set's. ``SETS["gpu"]`` is also
what ``clipfast bench`` prices in its roofline estimates on any machine.
"""
import os

import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

SETS = {
    "cpu": {
        # quick_gelu: (rows, features) of the MLP's c_fc output — batch·seq × 4·width.
        "QUICK_GELU": {"vit_b32_mlp": (64 * 50, 3072), "text_mlp_odd": (3 * 77, 2048)},
        # contrastive_loss: (N, d) — global batch × embedding width.
        "CONTRASTIVE_LOSS": {"n1024": (1024, 512), "n4096": (4096, 512)},
        # loss memory sweep (clipfast bench): N at d = 512, each (provider, N) in a fresh process.
        "LOSS_MEMORY_NS": (1024, 2048, 4096, 8192),
        # fused_adam: (model config, part) whose parameter shapes the optimizer steps over.
        "FUSED_ADAM": {"vit_b32_visual": ("ViT-B-32", "visual")},
        # attention: (batch, heads, length, head dim, causal) of the towers' self-attention.
        "ATTENTION": {"vit_b32": (4, 12, 50, 64, False), "text": (4, 8, 77, 64, True)},
        # model: (config, batch) for bench_model.py — forward / forward + backward.
        "MODEL": {"vit_b32": ("ViT-B-32", 2), "rn50": ("RN50", 2)},
        # train_step: (config, batch, context length) — forward, loss, backward, clip, AdamW (a ViT-B-32 step at
        # batch 2 is ~5-10 s on the shared 2-core box).
        "TRAIN_STEP": {"vit_b32": ("ViT-B-32", 2, 77), "rn50": ("RN50", 2, 77)},
    },
    "gpu": {
        "QUICK_GELU": {"vit_b32_mlp": (256 * 50, 3072), "vit_b16_mlp": (128 * 197, 3072),
                       "vit_l14_mlp": (64 * 257, 4096), "text_mlp": (256 * 77, 2048)},
        "CONTRASTIVE_LOSS": {"n8192": (8192, 512), "n32768": (32768, 512)},
        "LOSS_MEMORY_NS": (4096, 8192, 16384, 32768),
        "FUSED_ADAM": {"vit_b32_visual": ("ViT-B-32", "visual"), "vit_b32_all": ("ViT-B-32", "all")},
        "ATTENTION": {"vit_b32": (256, 12, 50, 64, False), "vit_b16": (128, 12, 197, 64, False),
                      "vit_l14": (64, 16, 257, 64, False), "text": (256, 8, 77, 64, True)},
        "MODEL": {"vit_b32": ("ViT-B-32", 256), "vit_b16": ("ViT-B-16", 128), "rn50": ("RN50", 128)},
        "TRAIN_STEP": {"vit_b32": ("ViT-B-32", 256, 77), "rn50": ("RN50", 128, 77)},
    },
}

SHAPE_SET = os.environ.get("CLIPFAST_BENCH_SHAPES") or ("gpu" if ON_GPU else "cpu")
if SHAPE_SET not in SETS:
    raise ValueError(f"CLIPFAST_BENCH_SHAPES: expected one of {sorted(SETS)}, got {SHAPE_SET!r}")

QUICK_GELU = SETS[SHAPE_SET]["QUICK_GELU"]
CONTRASTIVE_LOSS = SETS[SHAPE_SET]["CONTRASTIVE_LOSS"]
LOSS_MEMORY_NS = SETS[SHAPE_SET]["LOSS_MEMORY_NS"]
FUSED_ADAM = SETS[SHAPE_SET]["FUSED_ADAM"]
MODEL = SETS[SHAPE_SET]["MODEL"]
TRAIN_STEP = SETS[SHAPE_SET]["TRAIN_STEP"]
ATTENTION = SETS[SHAPE_SET]["ATTENTION"]
