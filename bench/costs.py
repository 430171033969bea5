"""FLOP and byte counts of one call of each op (the benchmarks' ``gflop_per_s`` / ``gb_per_s`` and
``clipfast bench``'s roofline estimates use the same formulas), and the datasheet peaks of the GPUs priced.

Counts are the work a call must do at least: matmul FLOPs (2 per multiply-add; elementwise math is not counted,
so elementwise ops are priced by bytes alone) and bytes each input is read and each output written once.
"""

# Dense (no sparsity) bf16 tensor-core peak and HBM bandwidth from NVIDIA's datasheets.
GPUS = {
    "A100-SXM4-80GB": {"arch": 80, "tflop_per_s": 312.0, "tb_per_s": 2.039},
    "H100-SXM5-80GB": {"arch": 90, "tflop_per_s": 989.0, "tb_per_s": 3.35},
}

# N x N x d matmuls in forward + backward of the symmetric CLIP loss. clipfast: forward computes each logits
# tile once for both directions (1), backward recomputes it and produces dI and dT (3). OpenCLIP: image->text
# and text->image logits (2), two gradient matmuls for each (4). Naive full matrix: logits once (1) + 2.
LOSS_MATMULS = {"clipfast": 4, "open_clip": 6, "naive": 3}


def quick_gelu(rows, cols, element_size, mode):
    """(flops, bytes) of bias + QuickGELU: fwd reads x, writes y; fwd_bwd also reads g and x, writes dx."""
    return 0, rows * cols * element_size * (2 if mode == "fwd" else 5)


def contrastive_loss(n, d, element_size, provider="clipfast"):
    """(flops, bytes) of the loss's forward + backward: ``LOSS_MATMULS[provider]`` N²d matmuls; bytes of
    clipfast's tiled path (read I, T forward; read I, T and write dI, dT backward) — the N×N logits a
    full-matrix provider writes and reads are not included."""
    return LOSS_MATMULS[provider] * 2 * n * n * d, 6 * n * d * element_size


def fused_adam(n_params, weight_bytes, grad_bytes, state_bytes):
    """(flops, bytes) of one AdamW step over ``n_params`` (bytes per parameter of the weights, the gradient and
    all per-element state): read weights, grads, state; write weights, state."""
    return 0, n_params * (2 * weight_bytes + grad_bytes + 2 * state_bytes)


def attention(batch, heads, length, head_dim, causal, element_size, mode="fwd_bwd"):
    """(flops, bytes) of scaled-dot-product attention (FlashAttention's benchmark convention): forward 2 matmuls
    (QKᵀ, PV), backward 5 (recompute QKᵀ, dV, dP, dQ, dK) = 3.5× in all; causal halves them. Bytes, the minimum
    of a fused kernel: forward reads q, k, v and writes o (+ the fp32 row LSE); backward also reads o, dO
    (+ LSE) and writes dq, dk, dv."""
    fwd = 4 * batch * heads * length * length * head_dim * (0.5 if causal else 1.0)
    tensor = batch * heads * length * head_dim * element_size
    lse = 4 * batch * heads * length
    if mode == "fwd":
        return fwd, 4 * tensor + lse
    return fwd * 3.5, 12 * tensor + 2 * lse


def attention_pool(batch, heads, length, head_dim, element_size, mode="fwd_bwd"):
    """(flops, bytes) of one query per (batch, head) over ``length`` keys: forward 4·B·H·L·D (scores and the
    weighted sum), backward 2.5× that. Bytes: forward reads q (B·H·D) and kv (2·B·L·H·D), writes o (+ fp32
    LSE); backward reads q, kv, o, dO (+ LSE) and writes dq and dkv."""
    fwd = 4 * batch * heads * length * head_dim
    q, kv, lse = batch * heads * head_dim * element_size, 2 * batch * length * heads * head_dim * element_size, 4 * batch * heads
    if mode == "fwd":
        return fwd, 2 * q + kv + lse
    return fwd * 3.5, 2 * q + kv + lse + 4 * q + 2 * kv + lse


def roofline(flops, nbytes, gpu):
    """Lower-bound seconds on ``gpu`` (a ``GPUS`` key): max(compute, memory) at the datasheet peaks, with
    which one binds. An estimate, not a measurement."""
    peak = GPUS[gpu]
    compute, memory = flops / (peak["tflop_per_s"] * 1e12), nbytes / (peak["tb_per_s"] * 1e12)
    return {"compute_s": compute, "memory_s": memory, "bound_s": max(compute, memory),
            "bound": "compute" if compute >= memory else "memory"}
