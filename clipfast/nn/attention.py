"""Transformer blocks with OpenCLIP's parameter names: ``Attention``, ``ResidualAttentionBlock``, ``Transformer``.

A block is pre-LN: ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`` with ``mlp = c_proj(act(c_fc(.)))``.
``act`` is exact GELU, or QuickGELU fused into ``c_fc`` (``LinearQuickGELU``) when ``quick_gelu=True``.
Keys per block: ``ln_1.*``, ``attn.in_proj_weight (3W, W)`` (rows q, k, v), ``attn.in_proj_bias``,
``attn.out_proj.*``, ``ln_2.*``, ``mlp.c_fc.*``, ``mlp.c_proj.*`` — identical to ``nn.MultiheadAttention``-based
OpenCLIP blocks, so state dicts load strictly both ways.

``Transformer.forward(x, pool_index=...)`` runs the last block for one token per sequence only (the class
token or the EOT token CLIP returns), through ``clipfast.ops.attention_pool``.

No copies around attention: ``Attention.forward`` hands the ``in_proj`` output ``(B, L, 3·W)`` to
``clipfast.ops.attention_qkvpacked`` as a free ``(B, L, 3, H, D)`` view and feeds its ``(B, L, H, D)``
result to ``out_proj`` as a free ``(B, L, W)`` view; ``forward_pooled`` hands the k/v rows' projection
``(B, L, 2·W)`` to ``attention_pool_kvpacked``. On the kernel path the backward returns packed
``dqkv``/``dkv`` (no stack of dq, dk, dv; ``tests/test_model_kernels.py`` counts the copies).
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipfast.nn.layer_norm import LayerNorm
from clipfast.nn.quick_gelu import LinearQuickGELU
from clipfast.nn.varlen import varlen_attention
from clipfast.ops.attention import attention_qkvpacked
from clipfast.ops.attention_pool import attention_pool_kvpacked

__all__ = ["Attention", "ResidualAttentionBlock", "Transformer"]


class Attention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection (``nn.MultiheadAttention``'s names).

    Args:
        width: model width W; heads: number of heads H (W % H == 0), head dim D = W // H.
    """

    def __init__(self, width, heads):
        super().__init__()
        if width % heads:
            raise ValueError(f"heads: width {width} must be a multiple of heads, got heads={heads}")
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x, causal=False, attn_mask=None):
        """Self-attention over all tokens. x: ``(B, L, W)`` -> ``(B, L, W)``.

        ``attn_mask`` (an additive ``(L, L)`` float mask, OpenCLIP style) is accepted for compatibility and
        runs PyTorch's SDPA directly; clipfast's own towers use ``causal``.
        """
        B, L, W = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(B, L, 3, self.heads, self.head_dim)
        if attn_mask is not None:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, D)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype)).transpose(1, 2)
        else:
            out = attention_qkvpacked(qkv, causal=causal)  # (B, L, H, D)
        return self.out_proj(out.reshape(B, L, W))

    def forward_pooled(self, x_query, x, kv_len=None):
        """Attention for one query token per sequence.

        Shapes: x_query ``(B, W)`` (normalized query token), x ``(B, L, W)`` (normalized keys/values),
        kv_len ``(B,)`` or None -> ``(B, W)``.
        """
        B, L, W = x.shape
        q = F.linear(x_query, self.in_proj_weight[:W], self.in_proj_bias[:W]).view(B, self.heads, self.head_dim)
        kv = F.linear(x, self.in_proj_weight[W:], self.in_proj_bias[W:]).view(B, L, 2, self.heads, self.head_dim)
        out = attention_pool_kvpacked(q, kv, kv_len=kv_len).reshape(B, W)
        return self.out_proj(out)

    def forward_varlen(self, x, layout):
        """Causal self-attention within each packed sequence. x: ``(T, W)`` packed tokens of ``layout``
        (a ``clipfast.nn.varlen.VarlenLayout``) -> ``(T, W)``."""
        T, W = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(T, 3, self.heads, self.head_dim)
        out = varlen_attention(qkv, layout)  # (T, H, D)
        return self.out_proj(out.reshape(T, W))

    def forward_pooled_varlen(self, x_query, x, layout):
        """``forward_pooled`` for packed tokens: each sequence's last token attends to its own tokens.

        Shapes: x_query ``(B, W)``, x ``(T, W)`` (normalized, packed as ``layout``) -> ``(B, W)``.
        """
        B, W = x_query.shape
        q = F.linear(x_query, self.in_proj_weight[:W], self.in_proj_bias[:W]).view(B, self.heads, self.head_dim)
        kv = layout.pad(F.linear(x, self.in_proj_weight[W:], self.in_proj_bias[W:]))  # (B, L_max, 2W)
        out = attention_pool_kvpacked(q, kv.view(B, -1, 2, self.heads, self.head_dim), kv_len=layout.lengths)
        out = out.reshape(B, W)
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block; see the module docstring for the math and the parameter names."""

    def __init__(self, width, heads, mlp_ratio=4.0, quick_gelu=False):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        mlp_width = int(width * mlp_ratio)
        if quick_gelu:
            c_fc, act = LinearQuickGELU(width, mlp_width), nn.Identity()
        else:
            c_fc, act = nn.Linear(width, mlp_width), nn.GELU()
        self.mlp = nn.Sequential(OrderedDict([("c_fc", c_fc), ("gelu", act), ("c_proj", nn.Linear(mlp_width, width))]))

    def get_weight_dtype(self):
        return self.mlp.c_fc.weight.dtype

    def forward(self, x, causal=False, attn_mask=None):
        """x: ``(B, L, W)`` -> ``(B, L, W)``."""
        x = x + self.attn(self.ln_1(x), causal=causal, attn_mask=attn_mask)
        return x + self.mlp(self.ln_2(x))

    def forward_pooled(self, x, index, kv_len=None):
        """The block's output at one position per sequence.

        Args:
            x: ``(B, L, W)`` block input.
            index: int (same position for every row) or a ``(B,)`` integer tensor of positions.
            kv_len: ``(B,)`` number of keys each row's query sees (``index + 1`` for causal), or None (all).

        Returns:
            ``(B, W)``: equal to ``forward(x, ...)[arange(B), index]``.
        """
        h = self.ln_1(x)
        if isinstance(index, int):
            x_q, h_q = x[:, index], h[:, index]
        else:
            rows = torch.arange(x.shape[0], device=x.device)
            x_q, h_q = x[rows, index], h[rows, index]
        y = x_q + self.attn.forward_pooled(h_q, h, kv_len)
        return y + self.mlp(self.ln_2(y))

    def forward_varlen(self, x, layout):
        """The block on packed tokens, attention causal within each sequence. x: ``(T, W)`` -> ``(T, W)``."""
        x = x + self.attn.forward_varlen(self.ln_1(x), layout)
        return x + self.mlp(self.ln_2(x))

    def forward_pooled_varlen(self, x, layout):
        """The block's output at each sequence's last token only. x: ``(T, W)`` packed -> ``(B, W)``; equal to
        ``forward_varlen(x, layout)[layout.last]``."""
        h = self.ln_1(x)
        y = x[layout.last] + self.attn.forward_pooled_varlen(h[layout.last], h, layout)
        return y + self.mlp(self.ln_2(y))


class Transformer(nn.Module):
    """A stack of ``layers`` residual attention blocks (``resblocks``) on batch-first ``(B, L, W)`` input."""

    def __init__(self, width, layers, heads, mlp_ratio=4.0, quick_gelu=False):
        super().__init__()
        self.width, self.layers = width, layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu=quick_gelu) for _ in range(layers)])

    def get_cast_dtype(self):
        return self.resblocks[0].get_weight_dtype()

    def init_text_parameters(self):
        """OpenAI/OpenCLIP's text-tower init: in_proj N(0, W^-1/2), out/c_proj N(0, W^-1/2 (2L)^-1/2),
        c_fc N(0, (2W)^-1/2)."""
        proj_std = self.width ** -0.5 * (2 * self.layers) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=self.width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * self.width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def _run(self, fn, *args):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x, attn_mask=None, *, causal=False, pool_index=None, kv_len=None):
        """Run the blocks.

        Args:
            x: ``(B, L, W)``.
            attn_mask: optional additive ``(L, L)`` mask (OpenCLIP compatibility; prefer ``causal``).
            causal: causal self-attention.
            pool_index: None returns all tokens ``(B, L, W)``; an int or ``(B,)`` tensor returns only those
                positions ``(B, W)``, computing the last block for them alone.
            kv_len: with ``pool_index``, keys each pooled query sees in the last block (``pool_index + 1``
                keeps a causal model causal); None sees all.
        """
        if pool_index is None or attn_mask is not None:
            blocks, last = self.resblocks, None
        else:
            blocks, last = self.resblocks[:-1], self.resblocks[-1]
        for block in blocks:
            x = self._run(block, x, causal, attn_mask)
        if last is not None:
            return self._run(last.forward_pooled, x, pool_index, kv_len)
        if pool_index is not None:
            rows = torch.arange(x.shape[0], device=x.device)
            return x[:, pool_index] if isinstance(pool_index, int) else x[rows, pool_index]
        return x

    def forward_varlen(self, x, layout):
        """Causal blocks on packed variable-length sequences, pooled at each sequence's last token.

        Args:
            x: ``(T, W)`` packed tokens, laid out as ``layout`` (``clipfast.nn.varlen.VarlenLayout``).

        Returns:
            ``(B, W)``: equal to ``forward(padded x, causal=True, pool_index=lengths - 1, kv_len=lengths)``
            (up to rounding order); the last block runs for the pooled tokens alone.
        """
        for block in self.resblocks[:-1]:
            x = self._run(block.forward_varlen, x, layout)
        return self._run(self.resblocks[-1].forward_pooled_varlen, x, layout)
