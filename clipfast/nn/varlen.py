"""Packed variable-length tokens for a causal tower: ``VarlenLayout`` and ``varlen_attention``.

A padded batch ``(B, L)`` whose sequence b only needs its first ``lengths[b]`` tokens (a causal text tower
pooled at EOT: nothing after EOT reaches the output) is run as ``T = sum(lengths)`` packed tokens ``(T, W)``.
Linear layers, LayerNorms and MLPs are per token, so they run on the packed rows unchanged; only attention
needs the sequence boundaries. Packed order: sequence 0's tokens, then sequence 1's, ... (row-major over the
real tokens of the padded batch), as flash-attn's varlen layout with ``cu_seqlens``.

Attention mechanisms (``VarlenLayout(..., kernel=...)``):

- ``kernel=True`` (the Triton backend: CUDA, or the interpreter on CPU): one call of
  ``clipfast.ops.attention_varlen_qkvpacked`` over ``cu_seqlens``.
- ``kernel=False`` (the CPU path): sequences grouped by length into buckets; each bucket is padded to its
  longest member (zero rows), runs one causal ``clipfast.ops.attention_qkvpacked`` and keeps the real rows.
  Causality makes the zero rows after a sequence invisible to its real queries, so the result is exact.
  Buckets are chosen by a small dynamic program over the sorted lengths that minimises
  ``sum_b (n_b * L_b**2 + BUCKET_COST)``: padding waste against a per-call cost.

Why buckets on CPU (``python bench/bench_model.py --attention --rounds 15`` with ``OMP_NUM_THREADS=1``: one
layer's causal attention fwd+bwd, B = 32, H = 8, D = 64, fp32, mechanisms interleaved; 2026-12-01, 2-core box)::

    captions          per-sequence SDPA  one padded bucket  DP buckets      block-diagonal mask (T, T)
    COCO mix (T=483)  17.2 ms            13.5 ms            9.2 ms (2)      42.4 ms
    mix + one 77      24.4 ms            104.6 ms           14.9 ms (3)     56.5 ms
    all 77 (T=2464)   133.1 ms           56.1 ms            55.3 ms (1)     1019 ms

Nested jagged tensors with SDPA failed on this CUDA build of torch without a GPU (``CUDA driver version is
insufficient``). Attention is a small part of a layer (at T = 471 with 2 threads its linear layers took ~45 ms
fwd+bwd, one padded bucket of attention 2.6 ms), so what packing saves is the linear/MLP work on padding:
packed T rows beat trimming the batch to ``max(eot) + 1`` (B * max rows) — ``bench/bench_model.py``'s
``clipfast_trimmed`` provider.

Host synchronisation: the layout reads the lengths on the host (once per forward; the packed size T is a
shape). ``torch.compile`` would break the graph there, so ``CLIP.encode_text`` takes the padded path while
compiling (one graph; ``fullgraph=True`` works) and this one in eager mode.
"""
import torch

from clipfast.ops.attention import attention_qkvpacked, attention_varlen_qkvpacked

__all__ = ["VarlenLayout", "varlen_attention", "BUCKET_COST"]

# Cost of one extra bucket, in query-key pairs of one sequence (measured: ~0.4 ms per bucket fwd+bwd, SDPA call
# plus gathers, vs ~95 ns per pair at H = 8, D = 64 on the 2-core CPU; figures in the module docstring).
BUCKET_COST = 5000


def _plan_buckets(lengths):
    """Group sequences into length buckets. lengths: list of ints -> list of lists of sequence ids (ascending)."""
    distinct = sorted(set(lengths))
    counts = [0] * len(distinct)
    where = {n: i for i, n in enumerate(distinct)}
    for n in lengths:
        counts[where[n]] += 1
    m = len(distinct)
    best, cut = [0.0] * (m + 1), [0] * (m + 1)
    for j in range(1, m + 1):  # best[j]: cheapest plan for the j shortest distinct lengths
        members, best[j] = 0, float("inf")
        for i in range(j, 0, -1):  # bucket = distinct lengths i-1 .. j-1, padded to distinct[j-1]
            members += counts[i - 1]
            cost = best[i - 1] + members * distinct[j - 1] ** 2 + BUCKET_COST
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    bounds, j = [], m
    while j > 0:
        bounds.append((distinct[cut[j]], distinct[j - 1]))
        j = cut[j]
    return [[b for b, n in enumerate(lengths) if lo <= n <= hi] for lo, hi in reversed(bounds)]


class _Bucket:
    """One padded attention call: n sequences padded to ``seq_len``; ``slots`` (T_b,) rows of the ``(n * seq_len)``
    buffer holding real tokens; ``tokens`` (T_b,) their packed rows (None: all T rows, in order)."""

    def __init__(self, n, seq_len, slots, tokens):
        self.n, self.seq_len, self.slots, self.tokens = n, seq_len, slots, tokens


def _real_rows(lengths, width):
    """(n * width) flat indices of the real tokens of n sequences padded to width, row-major. lengths: (n,)."""
    keep = torch.arange(width, device=lengths.device) < lengths[:, None]  # (n, width)
    return keep.flatten().nonzero().squeeze(1)


class VarlenLayout:
    """Where the real tokens of a padded ``(B, L)`` batch lie once packed.

    Args:
        lengths: ``(B,)`` integer tensor, real tokens per sequence, each in ``1 .. seq_len``.
        seq_len: L, the padded length of the batch.
        kernel: attention through the varlen kernel (True) or through CPU length buckets (False).

    Attributes:
        lengths ``(B,)`` int64; cu_seqlens int32 ``(B + 1,)``; max_seqlen int; num_tokens T;
        token_index ``(T,)``: flat index ``b * L + position`` of each packed token in the padded batch;
        positions ``(T,)``: its position in its sequence; last ``(B,)``: the packed row of each sequence's
        last token; buckets: the CPU attention plan (None with ``kernel``).
    """

    def __init__(self, lengths, seq_len, *, kernel):
        if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.numel() < 1:
            raise ValueError(f"lengths: expected a non-empty 1-D integer tensor, got {lengths!r}"[:300])
        host = lengths.tolist()
        if min(host) < 1 or max(host) > seq_len:
            raise ValueError(f"lengths: expected values in 1 .. {seq_len}, got min {min(host)} max {max(host)}")
        device = lengths.device
        self.lengths = lengths.to(torch.long)
        self.batch, self.seq_len = len(host), seq_len
        self.max_seqlen, self.num_tokens = max(host), sum(host)
        self.cu_seqlens = torch.zeros(self.batch + 1, dtype=torch.int32, device=device)
        self.cu_seqlens[1:] = torch.cumsum(self.lengths, 0)
        self.token_index = _real_rows(self.lengths, seq_len)  # (T,)
        self.positions = self.token_index % seq_len
        self.last = self.cu_seqlens[1:].to(torch.long) - 1
        self._pad_index = None
        self.buckets = None if kernel else self._buckets(host)

    def _buckets(self, host):
        groups = _plan_buckets(host)
        if len(groups) == 1:
            return [_Bucket(self.batch, self.max_seqlen, self.pad_index, None)]
        starts = self.cu_seqlens[:-1].to(torch.long)
        buckets = []
        for members in groups:
            ids = torch.tensor(members, device=self.lengths.device)
            width = max(host[b] for b in members)
            lengths = self.lengths[ids]
            slots = _real_rows(lengths, width)  # (T_b,)
            tokens = starts[ids].repeat_interleave(lengths) + slots % width
            buckets.append(_Bucket(len(members), width, slots, tokens))
        self._gather = torch.cat([b.tokens for b in buckets])
        self._scatter = torch.argsort(self._gather)
        return buckets

    @property
    def pad_index(self):
        """``(T,)`` row of each packed token in a ``(B * max_seqlen)`` padded buffer."""
        if self._pad_index is None:
            self._pad_index = _real_rows(self.lengths, self.max_seqlen)
        return self._pad_index

    def pad(self, x):
        """Packed ``(T, C)`` -> padded ``(B, max_seqlen, C)``, zeros after each sequence. Differentiable."""
        if self.num_tokens == self.batch * self.max_seqlen:
            return x.view(self.batch, self.max_seqlen, -1)
        out = x.new_zeros(self.batch * self.max_seqlen, x.shape[-1]).index_copy(0, self.pad_index, x)
        return out.view(self.batch, self.max_seqlen, -1)


def _bucket_attention(qkv, bucket):
    """Causal attention of one bucket. qkv: ``(T_b, 3, H, D)`` rows of the bucket's tokens -> ``(T_b, H, D)``."""
    rows = bucket.n * bucket.seq_len
    if rows == qkv.shape[0]:  # no padding: a view
        buf = qkv
    else:
        buf = qkv.new_zeros((rows, *qkv.shape[1:])).index_copy(0, bucket.slots, qkv)
    out = attention_qkvpacked(buf.view(bucket.n, bucket.seq_len, *qkv.shape[1:]), causal=True)  # (n, L_b, H, D)
    out = out.reshape(rows, *out.shape[2:])
    return out if rows == qkv.shape[0] else out.index_select(0, bucket.slots)


def varlen_attention(qkv, layout):
    """Causal self-attention within each packed sequence.

    Shapes: qkv ``(T, 3, H, D)`` (q, k, v of the packed tokens in ``layout``'s order) -> ``(T, H, D)``.
    Equal to running each sequence alone (up to rounding order). Differentiable in qkv.
    """
    if qkv.dim() != 4 or qkv.shape[0] != layout.num_tokens or qkv.shape[1] != 3:
        raise ValueError(f"qkv: expected ({layout.num_tokens}, 3, H, D), got {tuple(qkv.shape)}")
    if layout.buckets is None:
        return attention_varlen_qkvpacked(qkv, layout.cu_seqlens, layout.max_seqlen, causal=True)
    if len(layout.buckets) == 1:
        return _bucket_attention(qkv, layout.buckets[0])
    parts = [_bucket_attention(qkv.index_select(0, b.tokens), b) for b in layout.buckets]
    return torch.cat(parts).index_select(0, layout._scatter)
