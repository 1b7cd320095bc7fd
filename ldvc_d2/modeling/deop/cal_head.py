"""Classification anchor learning, CAL (DeOP seed 004, §3.3 eq. 3; SEED_SYSTEMS D6-D8).

One anchor query per mask proposal (query n ↔ proposal n, tied by index) learns where in CLIP's dense
features F_V (B×d×h×w, L2-normalised patch tokens) the evidence for the proposal's class lies:

* (D6) queries start at 0 with learned positions Q_pos (N×d); the memory is F_V plus 2-D sine positions S
  (DETR's, normalised, d/2 frequencies per axis). K post-norm DETR decoder layers:
  q ← LN(q + SA(q+Q_pos, q+Q_pos, q)); q ← LN(q + CA(q+Q_pos, F_V+S, F_V)); q ← LN(q + FFN(q)).
* (D7) heat-map output layer, released code: q ← LN(q + SA(…)); per head h (d_h = d/H)
  H_{h,n,l} = softmax_l(W_q^h(q_n + Q_pos,n) · W_k^h(F_V,l + S_l) / √d_h) · σ(M̃_{n,l}) with M̃ the mask
  logits resized bilinearly to the h×w grid; the value is the raw F_V split into H channel slices;
  F_I,n = normalize(concat_h Σ_l H_{h,n,l} F_V,l[slice h]). No output projection, H not renormalised; in
  training the softmax weights pass a dropout (released: 0.1) before the mask. Paper eq. 3: H = softmax(q F_V
  / √d) ⊙ M, F_I = H ⊙ F_V, i.e. the single-head case (MODEL.DEOP.CAL_HEATMAP_HEADS 1); "the attention maps
  are multiplied with the N proposal masks, enabling each anchor query to be aware of its corresponding
  mask/segment"). CAL takes σ(M̃) already on the grid: the mask-based patch severance [D3] needs the very
  same grid masks, so the DeOP forward computes them once for both.
* (D8) class logits ℓ_n = scale · F_I,n · Tᵀ over the C classes and the no-object embedding: :func:`class_logits`.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassificationAnchorLearning", "class_logits", "heatmap_pool", "sine_positions"]


def sine_positions(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised 2-D sine embedding of an h×w grid: (h·w)×dim ([y part; x part], dim/2 each)."""
    if dim % 4:
        raise ValueError(f"CAL: the feature width {dim} must be a multiple of 4 for 2-D sine positions.")
    half = dim // 2
    y = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w) / (h + 1e-6) * 2 * math.pi
    x = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w) / (w + 1e-6) * 2 * math.pi
    freq = temperature ** (2 * (torch.arange(half, dtype=torch.float32) // 2) / half)

    def encode(t: torch.Tensor) -> torch.Tensor:
        t = t[..., None] / freq
        return torch.stack([t[..., 0::2].sin(), t[..., 1::2].cos()], dim=-1).flatten(-2)

    return torch.cat([encode(y), encode(x)], dim=-1).reshape(h * w, dim)


def heatmap_pool(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, masks: torch.Tensor,
                 heads: int, dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """(D7) queries B×N×d (projected), keys B×L×d (projected), values B×L×d (raw F_V), masks B×N×L in [0, 1]
    → F_I B×N×d, L2-normalised: per head dropout(softmax_l(q·k/√d_h)) · mask, pooling the head's channel slice.

    ``dropout`` acts on the B×H×N×L softmax weights in training only, before the mask (released
    ``MultiHeadAttentionMy``: softmax → dropout 0.1 → × proposal mask → weights @ raw values).
    """
    b, n, d = queries.shape
    dh = d // heads
    q = queries.reshape(b, n, heads, dh).transpose(1, 2)
    k = keys.reshape(b, -1, heads, dh).transpose(1, 2)
    v = values.reshape(b, -1, heads, dh).transpose(1, 2)
    weights = F.dropout(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1), dropout, training)
    heat = weights * masks[:, None].to(q.dtype)
    return F.normalize((heat @ v).transpose(1, 2).reshape(b, n, d), dim=-1)


def class_logits(anchor_features: torch.Tensor, class_embeddings: torch.Tensor, scale: float) -> torch.Tensor:
    """(D8) F_I B×N×d and T (C+1)×d (both L2-normalised) → ℓ B×N×(C+1) = scale · F_I Tᵀ."""
    return scale * anchor_features @ class_embeddings.t().to(anchor_features.dtype)


class _DecoderLayer(nn.Module):
    """One post-norm DETR decoder layer (D6); ``cross=False`` keeps only self-attention (D7's first step)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, cross: bool = True):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1, self.drop1 = nn.LayerNorm(dim), nn.Dropout(dropout)
        self.cross = cross
        if cross:
            self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
            self.norm2, self.drop2 = nn.LayerNorm(dim), nn.Dropout(dropout)
            self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                     nn.Linear(ffn, dim))
            self.norm3, self.drop3 = nn.LayerNorm(dim), nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, qpos: torch.Tensor, memory: torch.Tensor, mpos: torch.Tensor) -> torch.Tensor:
        a = q + qpos
        q = self.norm1(q + self.drop1(self.self_attn(a, a, q, need_weights=False)[0]))
        if not self.cross:
            return q
        q = self.norm2(q + self.drop2(self.cross_attn(q + qpos, memory + mpos, memory, need_weights=False)[0]))
        return self.norm3(q + self.drop3(self.ffn(q)))


class ClassificationAnchorLearning(nn.Module):
    """CAL (D6-D7): dense features + proposal masks on their grid → one L2-normalised feature per proposal.

    Args:
        dim: CLIP embedding width d (512 for ViT-B/16). num_queries: N (= proposals).
        num_layers: K decoder layers (MODEL.DEOP.CAL_LAYERS). heads / ffn / dropout: MODEL.DEOP.CAL_*.
        heat_dropout: dropout on the heat weights in training (MODEL.DEOP.CAL_HEAT_DROPOUT, released 0.1).
        heatmap_heads: heads of the heat-map pooling (MODEL.DEOP.CAL_HEATMAP_HEADS; 0 = ``heads``, 1 = eq. 3).
    """

    def __init__(self, dim: int, num_queries: int, num_layers: int = 1, heads: int = 8, ffn: int = 1024,
                 dropout: float = 0.1, heat_dropout: float = 0.0, heatmap_heads: int = 0):
        super().__init__()
        heatmap_heads = heatmap_heads or heads
        if dim % heads:
            raise ValueError(f"MODEL.DEOP.CAL_HEADS={heads} must divide the CLIP embedding width {dim}.")
        if dim % heatmap_heads:
            raise ValueError(f"MODEL.DEOP.CAL_HEATMAP_HEADS={heatmap_heads} must divide the CLIP embedding width {dim}.")
        self.dim, self.heads, self.num_queries = dim, heads, num_queries
        self.heatmap_heads, self.heat_dropout = heatmap_heads, heat_dropout
        self.query_pos = nn.Embedding(num_queries, dim)
        self.layers = nn.ModuleList(_DecoderLayer(dim, heads, ffn, dropout) for _ in range(num_layers))
        self.out_self = _DecoderLayer(dim, heads, ffn, dropout, cross=False)
        self.heat_q = nn.Linear(dim, dim)
        self.heat_k = nn.Linear(dim, dim)

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """features: F_V B×d×h×w; masks: σ(M̃) B×N×(h·w) in [0, 1], the proposals on F_V's grid flattened
        row-major (bilinear resize of the logits, then sigmoid) → F_I B×N×d."""
        b, d, h, w = features.shape
        if masks.dim() != 3 or masks.shape[2] != h * w:
            raise ValueError(f"CAL: the masks must be B×N×(h·w) on the {h}×{w} feature grid, flattened; got "
                             f"shape {tuple(masks.shape)}.")
        if masks.shape[1] != self.num_queries:
            raise ValueError(f"CAL has {self.num_queries} anchor queries (MODEL.DEOP.NUM_PROPOSALS) but got "
                             f"{masks.shape[1]} proposals; the two must match.")
        memory = features.flatten(2).transpose(1, 2)  # B×L×d
        mpos = sine_positions(h, w, d).to(memory)[None]
        qpos = self.query_pos.weight[None].expand(b, -1, -1)
        q = torch.zeros_like(qpos)
        for layer in self.layers:
            q = layer(q, qpos, memory, mpos)
        q = self.out_self(q, qpos, memory, mpos)
        return heatmap_pool(self.heat_q(q + qpos), self.heat_k(memory + mpos), memory, masks, self.heatmap_heads,
                            self.heat_dropout, self.training)
