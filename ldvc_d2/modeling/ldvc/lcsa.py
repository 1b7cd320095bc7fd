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

Cost (issue 15): the routed step walks the query windows in chunks. Per chunk it gathers the keys and
values of each window's m routed windows (eq. 11) with one row gather from a B·L×2d K|V table and
attends (eq. 12); without autograd the chunk's result overwrites its own queries (used by no other
chunk). So only a chunk's gathered copies exist at any time (about ``chunk_elements`` floats), never the
W·m·n² copies of K and V a batched gather makes. With autograd (training) the chunks' outputs go to a
separate tensor, and the backward pass recomputes each chunk (replaying the forward's dropout masks) and
adds its gradients into one dQ and one dK|V, instead of keeping gathered copies for every window. Peak memory is then
Q, K and V (3·L·d) plus a chunk, against Q, K, V, the scaled Q and the output of global
self-attention; the work is m/W of global attention's score and weighting products.
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
        chunk_elements: about how many floats of gathered keys and values one chunk of query windows
            may hold (memory / speed trade-off of the routed step; results do not depend on it).
    """

    def __init__(self, dim: int, *, num_heads: int, window_size: int, topk: Optional[int], dropout: float = 0.0,
                 attn_dropout: float = 0.0, scale: str = "full_width", chunk_elements: int = 2 ** 18):
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
        self.chunk_elements = chunk_elements
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
        m = self._routed_windows(h, w)
        if m is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            out = self._attend(self._heads(q), self._heads(k), self._heads(v))
            out = out.transpose(1, 2).reshape(b, l, d)
        else:
            out = self._routed(x, m, h, w)
        return self.proj_drop(self.proj(out))

    def _routed_windows(self, h: int, w: int) -> Optional[int]:
        """m for an h×w grid, or None where attention is global (no routing, or m >= the window count)."""
        if self.topk is None:
            return None
        n = self.window_size
        if h % n or w % n:
            raise ValueError(
                f"LCSA: the {h}x{w} feature grid is not divisible by MODEL.LCTD.WINDOW_SIZE={n}. Use "
                f"input sizes that are multiples of patch_size*{n} pixels (the model pads crops to that)."
            )
        num_windows = (h // n) * (w // n)
        if self.topk < num_windows:
            return self.topk
        if self.topk > num_windows and not self._warned_clamp:
            logger.warning(
                f"MODEL.LCTD.TOPK_WINDOWS={self.topk} > {num_windows} windows of a {h}x{w} grid; using all "
                f"{num_windows} (plain self-attention)."
            )
            self._warned_clamp = True
        return None

    def _routed(self, x: torch.Tensor, m: int, h: int, w: int) -> torch.Tensor:
        """Eqs. (8)-(12) for B×(h·w)×d tokens, m < W routed windows; returns B×(h·w)×d before the projection."""
        n = self.window_size
        b, l, d = x.shape
        gh, gw = h // n, w // n
        windows = x.view(b, gh, n, gw, n, d).mean(dim=(2, 4)).view(b, gh * gw, d)  # eq. (8): B×W×d summaries
        ids = (windows @ windows.transpose(1, 2)).topk(m, dim=-1).indices  # eq. (10): B×W×m
        # rows of the flattened B·L token table that make up each window (row-major inside a window): B×W×n²
        grid = torch.arange(l, device=x.device).view(gh, n, gw, n).permute(0, 2, 1, 3).reshape(gh * gw, n * n)
        rows = grid + torch.arange(b, device=x.device).view(b, 1, 1) * l
        routed = rows[torch.arange(b, device=x.device).view(b, 1, 1), ids]  # eq. (11): B×W×m×n² key rows
        weight, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x, weight[:d], bias[:d]).view(b * l, d)  # eq. (9), Q and K|V of every token
        kv = F.linear(x, weight[d:], bias[d:]).view(b * l, 2 * d)
        step = max(1, self.chunk_elements // (m * n * n * 2 * d))
        if torch.is_grad_enabled() and not torch.jit.is_tracing():  # ONNX export traces the loop below
            return _RoutedAttention.apply(q, kv, self, rows, routed, step).view(b, l, d)
        for s in range(0, gh * gw, step):  # a chunk's result replaces its own queries, used by no other chunk
            q_rows = rows[:, s:s + step].reshape(-1)
            q.index_copy_(0, q_rows, self._chunk(q, kv, q_rows, routed[:, s:s + step]))
        return q.view(b, l, d)

    def _chunk(self, q: torch.Tensor, kv: torch.Tensor, q_rows: torch.Tensor, k_rows: torch.Tensor) -> torch.Tensor:
        """Eq. (12) for the c query windows of ``q_rows`` (B·c·n² rows of the B·L×d queries, window by window)
        against the m·n² routed keys each (``k_rows``: B×c×m×n² rows of the B·L×2d K|V table).
        Returns (B·c·n²)×d in the order of ``q_rows``."""
        return self._window_attention(q.index_select(0, q_rows), kv.index_select(0, k_rows.reshape(-1)),
                                      k_rows.shape[0] * k_rows.shape[1])

    def _window_attention(self, q: torch.Tensor, kv: torch.Tensor, windows: int) -> torch.Tensor:
        """(windows·n²)×d queries against (windows·m·n²)×2d gathered K|V, window by window.
        Returns (windows·n²)×d."""
        d = q.shape[1]
        heads, hd = self.num_heads, d // self.num_heads
        k, v = kv.view(windows, -1, 2, heads, hd).unbind(2)
        out = self._attend(q.view(windows, -1, heads, hd).transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).reshape(-1, d)

class _RoutedAttention(torch.autograd.Function):
    """Eq. (12) chunk by chunk with a backward pass that recomputes each chunk (same dropout masks: the
    random state of the forward pass is replayed) and adds its gradients into one dQ and one dK|V."""

    @staticmethod
    def forward(ctx, q, kv, layer, rows, routed, step):
        ctx.layer, ctx.step = layer, step
        ctx.rng = torch.cuda.get_rng_state(q.device) if q.is_cuda else torch.get_rng_state()
        ctx.save_for_backward(q, kv, rows, routed)
        out = torch.empty_like(q)
        for s in range(0, rows.shape[1], step):
            q_rows = rows[:, s:s + step].reshape(-1)
            out.index_copy_(0, q_rows, layer._chunk(q, kv, q_rows, routed[:, s:s + step]))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, kv, rows, routed = ctx.saved_tensors
        dq, dkv = torch.zeros_like(q), torch.zeros_like(kv)
        with torch.random.fork_rng(devices=[q.device] if q.is_cuda else []), torch.enable_grad():
            if q.is_cuda:
                torch.cuda.set_rng_state(ctx.rng, q.device)
            else:
                torch.set_rng_state(ctx.rng)
            for s in range(0, rows.shape[1], ctx.step):
                q_rows, k_rows = rows[:, s:s + ctx.step].reshape(-1), routed[:, s:s + ctx.step]
                k_rows = k_rows.reshape(-1)
                q_chunk = q.index_select(0, q_rows).requires_grad_()
                kv_chunk = kv.index_select(0, k_rows).requires_grad_()
                out = ctx.layer._window_attention(q_chunk, kv_chunk, rows.shape[0] * min(ctx.step, rows.shape[1] - s))
                gq, gkv = torch.autograd.grad(out, (q_chunk, kv_chunk), grad.index_select(0, q_rows))
                dq.index_add_(0, q_rows, gq)
                dkv.index_add_(0, k_rows, gkv)
        return dq, dkv, None, None, None, None
