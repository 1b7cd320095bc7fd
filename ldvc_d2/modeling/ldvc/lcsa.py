"""Local Consensus Self-Attention (LCSA), LDVC eqs. (8)-(12): route attention over windows.

Tokens are grouped into non-overlapping n×n windows. Each window is summarised by the average of its
tokens (eq. 8); the m windows most similar to it (dot product of the summaries, eq. 10) are the
only places its tokens look (eqs. 11-12). Objects are locally coherent, so attention is steered to
visually consistent regions ("visual consensus") instead of to every noisy token in the image.

Scale (MODEL.LDVC.LCTD.SCALE): eq. (12) divides by sqrt(d), d the full token width, and BiFormer, which
LCSA follows, keeps that full-width scale with several heads ("full_width", the default); "head_dim"
uses the usual multi-head 1/sqrt(d / heads), about sqrt(heads) times sharper. Choices where the paper
is silent (config keys in MODEL.LDVC.LCTD): multi-head attention (NUM_HEADS), an output projection after
eq. (12), as every transformer attention has, and dropout on the softmax weights (ATTN_DROPOUT) and
on the output (DROPOUT), as ZegCLIP's decoder. With m = number of windows LCSA is exactly ordinary
self-attention (softmax attention does not depend on the order of the keys), which is also how
``SELF_ATTENTION="global"`` (Table 4's "w/o LCSA") runs.

Cost: the work is m/W of global attention's score and weighting products. On large grids the routed
step (``lcsa_routed.py``) runs head by head and chunk by chunk, so it holds the output plus one head's
Q, K, V and one chunk (never Q, K, V of all heads nor gathered copies of K and V for every window), and
its training backward pass recomputes instead of storing. On small grids (one image's attention outputs
at most four chunks: d 512 up to 32×32 tokens) ``lcsa_windows.py`` runs all heads at once in window
order and keeps Q, K, V for backward, as global attention does (faster there than the per-head passes,
slightly faster than global attention on the CPU: docs/speed.md).
"""
import logging
from typing import Optional

import torch
from torch import nn

from .lcsa_routed import RoutedSpec, routed_attention, scaled_sdpa
from .lcsa_windows import window_attention

__all__ = ["LCSA_SCALES", "LocalConsensusSelfAttention"]

LCSA_SCALES = ("full_width", "head_dim")  # eq. (12) as written / the usual multi-head scale

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
        chunk_elements: about how many floats of one head's gathered keys and values one chunk of query
            windows (of all images) may hold (memory / speed trade-off of the routed step; results do
            not depend on it).
    """

    def __init__(self, dim: int, *, num_heads: int, window_size: int, topk: Optional[int], dropout: float = 0.0,
                 attn_dropout: float = 0.0, scale: str = "full_width", chunk_elements: int = 2 ** 18):
        super().__init__()
        if window_size < 1 or (topk is not None and topk < 1):
            raise ValueError(f"MODEL.LDVC.LCTD.WINDOW_SIZE ({window_size}) and TOPK_WINDOWS ({topk}) must be >= 1.")
        if not 0 <= attn_dropout < 1:
            raise ValueError(f"MODEL.LDVC.LCTD.ATTN_DROPOUT must be in [0, 1), got {attn_dropout}.")
        if chunk_elements < 1:
            raise ValueError(f"MODEL.LDVC.LCTD.CHUNK_ELEMENTS must be >= 1, got {chunk_elements}.")
        if dim % num_heads:
            raise ValueError(f"MODEL.LDVC.LCTD.NUM_HEADS={num_heads} must divide the feature width {dim}.")
        if scale not in LCSA_SCALES:
            raise ValueError(f"MODEL.LDVC.LCTD.SCALE must be one of {list(LCSA_SCALES)}, got '{scale}'.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.topk = topk
        self.scale = dim ** -0.5 if scale == "full_width" else (dim // num_heads) ** -0.5
        self.attn_dropout = attn_dropout
        self.chunk_elements = chunk_elements
        self.qkv = nn.Linear(dim, 3 * dim)  # eq. (9): Q, K, V = Chunk(Proj(V_in))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self._warned_clamp = False

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, l, d = t.shape
        return t.view(b, l, self.num_heads, d // self.num_heads).transpose(1, 2)  # B×H×L×hd

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T · scale) v over the last two dims (eq. 12), attention dropout while training."""
        return scaled_sdpa(q, k, v, self.scale, dropout_p=self.attn_dropout if self.training else 0.0)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x: B×(h·w)×d tokens in row-major grid order. Returns B×(h·w)×d."""
        b, l, d = x.shape
        if l != h * w:
            raise ValueError(f"LCSA got {l} tokens for a {h}x{w} grid.")
        m = self._routed_windows(h, w)
        if m is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            out = self._attend(self._heads(q), self._heads(k), self._heads(v))
            out = self.proj(out.transpose(1, 2).reshape(b, l, d))
        else:
            out = self._routed(x, m, h, w)
        return self.proj_drop(out)

    def _routed_windows(self, h: int, w: int) -> Optional[int]:
        """m for an h×w grid, or None where attention is global (no routing, or m >= the window count)."""
        if self.topk is None:
            return None
        n = self.window_size
        if h % n or w % n:
            raise ValueError(
                f"LCSA: the {h}x{w} feature grid is not divisible by MODEL.LDVC.LCTD.WINDOW_SIZE={n}. Use "
                f"input sizes that are multiples of patch_size*{n} pixels (the model pads crops to that)."
            )
        num_windows = (h // n) * (w // n)
        if self.topk < num_windows:
            return self.topk
        if self.topk > num_windows and not self._warned_clamp:
            logger.warning(
                f"MODEL.LDVC.LCTD.TOPK_WINDOWS={self.topk} > {num_windows} windows of a {h}x{w} grid; using all "
                f"{num_windows} (plain self-attention)."
            )
            self._warned_clamp = True
        return None

    def _routed(self, x: torch.Tensor, m: int, h: int, w: int) -> torch.Tensor:
        """Eqs. (8)-(12) and the output projection for B×(h·w)×d tokens, m < W routed windows."""
        n = self.window_size
        b, l, d = x.shape
        gh, gw = h // n, w // n
        with torch.autocast(x.device.type, enabled=False):  # routing in fp32 at least: no bf16 near-ties
            xr = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            # eq. (8): B×W×d window means, summed one axis at a time (contiguous reductions, faster than
            # one mean over two strided axes)
            windows = xr.view(b, gh, n, gw, n, d).sum(2).sum(3).view(b, gh * gw, d) / (n * n)
            ids = (windows @ windows.transpose(1, 2)).topk(m, dim=-1).indices  # eq. (10): B×W×m
        # rows of the flattened B·L token table that make up each window (row-major inside a window): B×W×n²
        grid = torch.arange(l, device=x.device).view(gh, n, gw, n).permute(0, 2, 1, 3).reshape(gh * gw, n * n)
        rows = grid + torch.arange(b, device=x.device).view(b, 1, 1) * l
        weights = (self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias)
        if torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64:  # as autocast's linear
            dtype = torch.get_autocast_dtype(x.device.type)  # the passes run in this dtype, autocast off
            x, weights = x.to(dtype), tuple(t.to(dtype) for t in weights)
        # Plain ints: while exporting (ONNX tracing, torch.export) sizes stay symbolic, so the chunk is
        # bounded per image there; eagerly it is bounded for the whole batch.
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        images = 1 if tracing else int(b)
        step = max(1, self.chunk_elements // (images * m * n * n * 2 * self.head_dim))
        dropout = self.attn_dropout if self.training else 0.0
        if h * w * d <= 4 * self.chunk_elements and not tracing:
            # a small grid (one image's attention outputs at most 4 chunks): all heads at once in window
            # order (lcsa_windows.py), as many query windows per chunk as the per-head passes take
            spec = RoutedSpec(self.num_heads, self.head_dim, self.scale, dropout, step * images)
            flat_ids = (ids + torch.arange(b, device=x.device).view(b, 1, 1) * (gh * gw)).view(b * gh * gw, m)
            with torch.autocast(x.device.type, enabled=False):
                return window_attention(x.reshape(b * l, d), *weights, rows.reshape(-1), flat_ids, spec).view(b, l, d)
        routed = rows[torch.arange(b, device=x.device).view(b, 1, 1), ids]  # eq. (11): B×W×m×n² key rows
        spec = RoutedSpec(self.num_heads, self.head_dim, self.scale, dropout, step)
        with torch.autocast(x.device.type, enabled=False):
            return routed_attention(x.reshape(b * l, d), *weights, rows, routed, spec).view(b, l, d)
