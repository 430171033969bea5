"""Named benchmark shapes: CPU-sized by default (each case runs in seconds), CLIP's real shapes on a GPU."""
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

# quick_gelu: (rows, features) of the MLP's c_fc output — batch·seq × 4·width.
QUICK_GELU = {
    "vit_b32_mlp": (64 * 50, 3072),
    "text_mlp_odd": (3 * 77, 2048),
} if not ON_GPU else {
    "vit_b32_mlp": (256 * 50, 3072),
    "vit_b16_mlp": (128 * 197, 3072),
    "vit_l14_mlp": (64 * 257, 4096),
    "text_mlp": (256 * 77, 2048),
}

# model: (open_clip config name, batch) for bench_model.py — a training step at a CPU-sized batch here.
MODEL = {
    "vit_b32": ("ViT-B-32", 8),
    "rn50": ("RN50", 8),
} if not ON_GPU else {
    "vit_b32": ("ViT-B-32", 256),
    "vit_b16": ("ViT-B-16", 128),
    "rn50": ("RN50", 128),
}

# train_step: (model config name, per-step batch, context length) for bench_train_step.py — one full optimizer
# step (forward, loss, backward, clip, AdamW, logit_scale clamp). "demo" is what `make demo` trains.
TRAIN_STEP = {
    "demo": ("demo-vit", 128, 16),
    "vit_b32": ("ViT-B-32", 8, 77),
} if not ON_GPU else {
    "vit_b32": ("ViT-B-32", 256, 77),
    "vit_b16": ("ViT-B-16", 128, 77),
}
