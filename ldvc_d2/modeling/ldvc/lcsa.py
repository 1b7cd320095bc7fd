"""Local Consensus Self-Attention (LCSA), LDVC eqs. (8)-(12): route attention over windows.

Tokens are grouped into non-overlapping n×n windows. Each window is summarised by the average of its
tokens (eq. 8); the m windows most similar to it (dot product of the summaries, eq. 10) are the
only places its tokens look (eqs. 11-12). Objects are locally coherent, so attention is steered to
visually consistent regions ("visual consensus") instead of to every noisy token in the image.

Scale (MODEL.LCTD.SCALE): eq. (12) divides by sqrt(d), d the full token width, and BiFormer, which
LCSA follows, keeps that full-width scale with several heads ("full_width", the default); "head_dim"
uses the usual multi-head 1/sqrt(d / heads), about sqrt(heads) times sharper. Choices where the paper
is silent (config keys in MODEL.LCTD): multi-head attention (NUM_HEADS), an output projection after
eq. (12), as every transformer attention has, and dropout on the softmax weights (ATTN_DROPOUT) and
on the output (DROPOUT), as ZegCLIP's decoder. With m = number of windows LCSA is exactly ordinary
self-attention (softmax attention does not depend on the order of the keys), which is also how
``SELF_ATTENTION="global"`` (Table 4's "w/o LCSA") runs.
"""
import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LocalConsensusSelfAttention"]

logger = logging.getLogger(__name__)


class LocalConsensusSelfAttention(nn.Module):
    """Self-attention over B×(h·w)×d tokens of an h×w grid; ``topk=None`` means global attention.

    Args:
        dim: token width d.
        num_heads: attention heads (d must be divisible by it).
        window_size: window side n in tokens (eq. 8); h and w must be multiples of n.
        topk: m, routed windows per window (eq. 10); None = all tokens (plain self-attention).
        dropout: dropout on the output projection.
        attn_dropout: dropout on the softmax weights (training only).
        scale: "full_width" (1/sqrt(dim), eq. 12) or "head_dim" (1/sqrt(dim / num_heads)).
    """

    def __init__(self, dim: int, *, num_heads: int, window_size: int, topk: Optional[int], dropout: float = 0.0,
                 attn_dropout: float = 0.0, scale: str = "full_width"):
        super().__init__()
        if window_size < 1 or (topk is not None and topk < 1):
            raise ValueError(f"MODEL.LCTD.WINDOW_SIZE ({window_size}) and TOPK_WINDOWS ({topk}) must be >= 1.")
        if dim % num_heads:
            raise ValueError(f"MODEL.LCTD.NUM_HEADS={num_heads} must divide the feature width {dim}.")
        if scale not in ("full_width", "head_dim"):
            raise ValueError(f"MODEL.LCTD.SCALE must be 'full_width' or 'head_dim', got '{scale}'.")
        self.num_heads = num_heads
        self.window_size = window_size
        self.topk = topk
        self.scale = dim ** -0.5 if scale == "full_width" else (dim // num_heads) ** -0.5
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)  # eq. (9): Q, K, V = Chunk(Proj(V_in))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self._warned_clamp = False

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, l, d = t.shape
        return t.view(b, l, self.num_heads, d // self.num_heads).transpose(1, 2)  # B×H×L×hd

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T · scale) v over the last two dims (eq. 12). SDPA's own scale is 1/sqrt(head_dim),
        so q is rescaled first (works on every torch with SDPA, also without its ``scale`` argument)."""
        q = q * (self.scale * q.shape[-1] ** 0.5)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x: B×(h·w)×d tokens in row-major grid order. Returns B×(h·w)×d."""
        b, l, d = x.shape
        if l != h * w:
            raise ValueError(f"LCSA got {l} tokens for a {h}x{w} grid.")
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.topk is None:
            out = self._attend(self._heads(q), self._heads(k), self._heads(v))
            out = out.transpose(1, 2).reshape(b, l, d)
        else:
            out = self._routed(x, q, k, v, h, w)
        return self.proj_drop(self.proj(out))

    def _to_windows(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """B×(h·w)×c -> B×W×n²×c, windows in row-major order, tokens row-major inside a window."""
        n = self.window_size
        b, _, c = t.shape
        t = t.view(b, h // n, n, w // n, n, c).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(b, (h // n) * (w // n), n * n, c)

    def _from_windows(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n = self.window_size
        b, _, _, c = t.shape
        t = t.view(b, h // n, w // n, n, n, c).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(b, h * w, c)

    def _routed(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n = self.window_size
        if h % n or w % n:
            raise ValueError(
                f"LCSA: the {h}x{w} feature grid is not divisible by MODEL.LCTD.WINDOW_SIZE={n}. Use "
                f"input sizes that are multiples of patch_size*{n} pixels (the model pads crops to that)."
            )
        num_windows = (h // n) * (w // n)
        m = self.topk
        if m > num_windows:
            if not self._warned_clamp:
                logger.warning(
                    f"MODEL.LCTD.TOPK_WINDOWS={m} > {num_windows} windows of a {h}x{w} grid; using all "
                    f"{num_windows} (plain self-attention)."
                )
                self._warned_clamp = True
            m = num_windows
        b, _, d = x.shape
        hd = d // self.num_heads
        windows = self._to_windows(x, h, w).mean(dim=2)  # eq. (8): B×W×d window summaries
        affinity = windows @ windows.transpose(1, 2)  # eq. (10): B×W×W
        ids = affinity.topk(m, dim=-1).indices  # B×W×m

        qw = self._to_windows(q, h, w)  # B×W×n²×d
        kw, vw = self._to_windows(k, h, w), self._to_windows(v, h, w)
        batch = torch.arange(b, device=x.device)[:, None, None]
        ks = kw[batch, ids].flatten(2, 3)  # eq. (11): B×W×(m·n²)×d
        vs = vw[batch, ids].flatten(2, 3)

        def split(t):  # B×W×L×d -> B×W×H×L×hd
            return t.view(*t.shape[:3], self.num_heads, hd).transpose(2, 3)

        out = self._attend(split(qw), split(ks), split(vs))  # eq. (12)
        out = out.transpose(2, 3).reshape(b, num_windows, n * n, d)
        return self._from_windows(out, h, w)
