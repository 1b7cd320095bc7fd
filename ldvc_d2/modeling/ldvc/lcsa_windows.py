"""LCSA's routed step on small grids (LDVC eqs. (9), (11), (12) and the output projection), all heads at
once, in window order, for inference and training.

Where one image's attention outputs are at most four MODEL.LDVC.LCTD.CHUNK_ELEMENTS (d 512 with the
default: grids up to 32×32 tokens, the grid of a 512-px window at ViT-B/16; ``lcsa.py`` dispatches), the
tokens are put in window order (the n² tokens of each window together) and Q and K|V of all heads come
from the qkv projection (eq. 9), laid out heads first: H × (B·W) × n²·hd. A chunk of query windows (as
many as the per-head passes take, so its buffer holds the K|V of all heads that theirs holds of one)
gathers its m routed windows' keys and values (eq. 11) for every head with one row gather into a buffer
reused from chunk to chunk, and attends with one batched call over heads and windows (eq. 12); the heads'
outputs are projected together and put back in token order once.

Training (:class:`_WindowAttention`) saves Q, K|V of all heads and the attention outputs (4·B·L·d
floats, what global attention's backward keeps too) instead of recomputing the projections; its backward
pass recomputes each chunk's softmax (never stored) with the same dropout masks (the forward's random
state is replayed; both passes draw one mask per chunk in the same order), applies the softmax-attention
derivative by hand and adds the chunk's dK, dV into the routed windows' rows.

Results equal the per-head passes of ``lcsa_routed.py`` up to float rounding. On the CPU at 32×32
tokens (d 512, 8 heads, top-16) this path takes 0.92-0.96 of global attention's time (inference and
training, one or two threads), where the per-head passes take up to 1.2× (training); it holds about twice
global attention's tensors there.
``tools/benchmark_speed.py --sections lcsa`` prints time and memory against global attention
(docs/speed.md).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .lcsa_routed import RoutedSpec, dropout_mask, replayed_rng, rng_state

__all__ = ["window_attention"]


def window_attention(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor, w_o: torch.Tensor,
                     b_o: torch.Tensor, order: torch.Tensor, flat_ids: torch.Tensor, spec: RoutedSpec) -> torch.Tensor:
    """x: B·L×d tokens in token order; order: the B·L token rows in window order (window w of the
    flattened B·W windows is rows ``order[w·n²:(w+1)·n²]``); flat_ids: B·W×m routed windows of each
    window (eq. 10), as indices into the B·W windows. ``spec.step``: query windows per chunk (all images).
    Returns the projected B·L×d output in token order; differentiable when autograd needs it."""
    tensors = (x, w_qkv, b_qkv, w_o, b_o)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _WindowAttention.apply(x, w_qkv, b_qkv, w_o, b_o, order, flat_ids, spec)
    return _forward(x, w_qkv, b_qkv, w_o, b_o, order, flat_ids, spec)[0]


def _layout(x: torch.Tensor, order: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor, windows: int,
            spec: RoutedSpec) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. (9) in window order: Q (H×BW×n²×hd, already multiplied by the softmax scale) and K|V
    (H×BW×n²·2·hd: one row per window and head, each token's key beside its value), one projection at a
    time (Q, K, V = the qkv weight's three row blocks), so no B·L×3d product is held beside them."""
    xw, d = x.index_select(0, order), x.shape[1]
    heads, hd = spec.num_heads, spec.head_dim

    def projected(i: int, scale: float = 1.0) -> torch.Tensor:  # the qkv weight's i-th row block (× scale),
        w, b = w_qkv[i * d:(i + 1) * d], b_qkv[i * d:(i + 1) * d]  # as an H×BW×n²×hd view
        t = F.linear(xw, w * scale, b * scale) if scale != 1.0 else F.linear(xw, w, b)
        return t.view(windows, -1, heads, hd).permute(2, 0, 1, 3)

    q = projected(0, spec.scale).contiguous()  # the scale folded into the weights: no pass over Q
    kv = x.new_empty(heads, windows, x.shape[0] // windows, 2, hd)
    for i in (1, 2):
        kv[..., i - 1, :] = projected(i)
    return q, kv.view(heads, windows, -1)


class _Gather:
    """Eq. (11) for a chunk of query windows: the m routed windows' K|V rows of every head, gathered into
    a buffer that every full-size chunk reuses (fresh large tensors cost page faults each time). Rows are
    addressed in the flattened H·BW table (head h's window w is row h·BW + w), so the gather and the
    gradient's scatter-add run along the first dimension (ATen's contiguous row-copy paths)."""

    def __init__(self, kv: torch.Tensor, flat_ids: torch.Tensor, step: int, head_dim: int):
        heads, windows, width = kv.shape
        self.table, self.hd = kv.view(heads * windows, width), head_dim
        offsets = torch.arange(heads, device=kv.device).view(heads, 1, 1) * windows
        self.rows = flat_ids.unsqueeze(0) + offsets  # H×BW×m rows of the flattened table
        self.buffer = kv.new_empty(heads * min(step, windows) * flat_ids.shape[1], width)

    def rows_of(self, s: int, e: int) -> torch.Tensor:
        """Rows (H·(e-s)·m) of query windows s..e-1's routed windows, head-major."""
        return self.rows[:, s:e].reshape(-1)

    def __call__(self, s: int, e: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """K and V of query windows s..e-1: H×(e-s)×m·n²×hd each (strided views of one gather)."""
        rows = self.rows_of(s, e)
        full = rows.numel() == self.buffer.shape[0]
        g = torch.index_select(self.table, 0, rows, out=self.buffer) if full else self.table.index_select(0, rows)
        k, v = g.view(self.rows.shape[0], e - s, -1, 2, self.hd).unbind(3)
        return k, v


def _chunks(windows: int, step: int):
    for s in range(0, windows, step):
        yield s, min(s + step, windows)


def _forward(x, w_qkv, b_qkv, w_o, b_o, order, flat_ids, spec: RoutedSpec, keep: bool = False):
    """(B·L×d output in token order, (Q, K, V, window-order attention outputs) if ``keep``)."""
    windows = flat_ids.shape[0]
    q, kv = _layout(x, order, w_qkv, b_qkv, windows, spec)
    gather = _Gather(kv, flat_ids, spec.step, spec.head_dim)
    heads, r = q.shape[0], q.shape[2]
    attn = x.new_empty(windows, r, heads, spec.head_dim)  # window order, heads side by side (the output
    by_head = attn.permute(2, 0, 1, 3)  # projection's input), written chunk by chunk through this view
    for s, e in _chunks(windows, spec.step):
        k_c, v_c = gather(s, e)
        if spec.attn_dropout:  # eq. (12) written out: the mask is drawn here and replayed in backward
            p = torch.softmax(q[:, s:e] @ k_c.transpose(-1, -2), dim=-1)
            by_head[:, s:e] = (p * dropout_mask(p, spec.attn_dropout)) @ v_c
        else:  # q carries the softmax scale already
            by_head[:, s:e] = F.scaled_dot_product_attention(q[:, s:e], k_c, v_c, scale=1.0)
    attn = attn.view(x.shape)
    out = torch.empty_like(x).index_copy_(0, order, torch.addmm(b_o, attn, w_o.t()))
    return out, ((q, kv, attn) if keep else None)


class _WindowAttention(torch.autograd.Function):
    """:func:`_forward` with a backward pass that recomputes each chunk's softmax (see the module text)."""

    @staticmethod
    def forward(ctx, x, w_qkv, b_qkv, w_o, b_o, order, flat_ids, spec):
        ctx.spec = spec
        ctx.rng = rng_state(x.device)
        out, saved = _forward(x, w_qkv, b_qkv, w_o, b_o, order, flat_ids, spec, keep=True)
        ctx.save_for_backward(x, w_qkv, w_o, order, flat_ids, *saved)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w_qkv, w_o, order, flat_ids, q, kv, attn = ctx.saved_tensors
        spec = ctx.spec
        need_x, need_w, need_b, need_wo, need_bo = ctx.needs_input_grad[:5]
        grad_w = grad.index_select(0, order)  # window order
        dw_o = grad_w.t() @ attn if need_wo else None
        db_o = grad_w.sum(0) if need_bo else None
        dx = dw_qkv = db_qkv = None
        if need_x or need_w or need_b:
            with replayed_rng(ctx.rng, x.device):
                grads = _qkv_grad(grad_w @ w_o, attn, q, kv, flat_ids, spec, x.dtype)
            del grad_w
            d = x.shape[1]
            xw = x.index_select(0, order) if need_w else None
            dw_qkv = torch.empty_like(w_qkv) if need_w else None
            db_qkv = x.new_empty(3 * d) if need_b else None
            dx_w = None
            for i, g in enumerate(grads):  # Q, K, V: the qkv weight's row blocks
                g = g.view(spec.num_heads, -1, spec.head_dim).transpose(0, 1).reshape(-1, d)  # B·L×d, window order
                rows = slice(i * d, (i + 1) * d)
                if need_x:
                    w_i = w_qkv[rows].to(g.dtype)
                    dx_w = g @ w_i if dx_w is None else dx_w.addmm_(g, w_i)
                g = g.to(x.dtype)
                if need_w:
                    dw_qkv[rows] = g.t() @ xw
                if need_b:
                    db_qkv[rows] = g.sum(0)
            dx = torch.empty_like(x).index_copy_(0, order, dx_w.to(x.dtype)) if need_x else None
        return dx, dw_qkv, db_qkv, dw_o, db_o, None, None, None


def _qkv_grad(d_attn: torch.Tensor, attn: torch.Tensor, q: torch.Tensor, kv: torch.Tensor, flat_ids: torch.Tensor,
              spec: RoutedSpec, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients at Q, K, V (eq. 9's output; each H×BW×n²·hd) from the gradient dO at the heads'
    attention outputs O (both B·L×d, window order): per chunk, with S the scaled scores, P = softmax(S),
    P_d = P ⊙ mask: dV += P_d^T dO, dP = (dO V^T) ⊙ mask, dS = P ⊙ (dP - D), dQ = s dS K, dK += dS^T (s Q),
    where D = Σ_j dP ⊙ P = Σ dO ⊙ O per query (one product for all chunks). Summed in fp32 under low
    precision."""
    heads, windows, r, hd = q.shape
    acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    d_o, o = d_attn.view(windows, r, heads, hd), attn.view(windows, r, heads, hd)
    dd = (d_o.float() * o.float()).sum(-1).permute(2, 0, 1).unsqueeze(-1).to(q.dtype)  # D: H×BW×n²×1
    d_o = d_o.permute(2, 0, 1, 3).contiguous()  # H×BW×n²×hd
    del d_attn
    dq = torch.empty(q.shape, dtype=acc, device=q.device)
    dk, dv = (torch.zeros(heads * windows, r * hd, dtype=acc, device=q.device) for _ in range(2))
    gather = _Gather(kv, flat_ids, spec.step, hd)
    for s, e in _chunks(windows, spec.step):
        k_c, v_c = gather(s, e)
        q_c, d_o_c = q[:, s:e], d_o[:, s:e]
        p = torch.softmax(q_c @ k_c.transpose(-1, -2), dim=-1)
        dp = d_o_c @ v_c.transpose(-1, -2)
        mask: Optional[torch.Tensor] = dropout_mask(p, spec.attn_dropout) if spec.attn_dropout else None
        dv_c = (p if mask is None else p * mask).transpose(-1, -2) @ d_o_c
        if mask is not None:
            dp.mul_(mask)
        ds = p.mul_(dp.sub_(dd[:, s:e]))  # dS, written over P (no longer needed)
        dq[:, s:e] = ds @ k_c
        rows = gather.rows_of(s, e)
        dk.index_add_(0, rows, (ds.transpose(-1, -2) @ q_c).reshape(-1, r * hd).to(acc))
        dv.index_add_(0, rows, dv_c.reshape(-1, r * hd).to(acc))
    return dq.mul_(spec.scale).view(heads, windows, -1), dk.view(heads, windows, -1), dv.view(heads, windows, -1)
