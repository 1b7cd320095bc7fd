"""LCSA's routed step (LDVC eqs. (9), (11), (12) and the output projection), head by head and chunk
by chunk, with a backward pass that recomputes instead of storing.

``routed_attention`` gets the B·L×d tokens, the qkv and output projections and the routing (the rows of
each query window and of its m routed windows, from eqs. (8) and (10) in ``lcsa.py``). For one head at
a time it projects that head's Q and K|V from the tokens (eq. 9: the rows of the qkv weight that belong
to the head), walks the query windows in chunks that gather each window's m routed windows' keys and
values with one row gather (eq. 11) and attend (eq. 12), and adds the head's share of the output
projection, ``out += attn_h W_o[:, h]^T`` (the projection written per head). So the routed step holds
the output, one head's Q, K, V and one chunk, never Q, K and V of all heads or gathered copies of K and
V for every window; results equal the all-heads formula up to float rounding. One head per pass was
the fastest and smallest of 1, 2 or 4 heads per pass on the CPU (one LCSA layer, d 512, 8 heads;
docs/speed.md).

Without autograd a chunk uses ``scaled_dot_product_attention`` and its result overwrites its own
queries (used by no other chunk). With autograd (training) ``_RoutedAttention`` saves only the tokens,
weights and routing; its backward pass recomputes each head's projections and each chunk's softmax with
the same dropout masks (the forward's random state is replayed, and both passes draw the masks in the same
order) and applies the softmax-attention derivative by hand (``_chunk_backward``), adding a chunk's
gradients into the head's dQ and dK|V; the weight gradients are one product per head. This is the path
for large grids and for export (tracing); small grids take ``lcsa_windows.py``.
"""
import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["RoutedSpec", "dropout_mask", "replayed_rng", "rng_state", "routed_attention"]


@dataclass(frozen=True)
class RoutedSpec:
    """What the routed step needs of an LCSA layer: heads, their width, the softmax scale of eq. (12)
    (applied to the scores, whatever the head width), attention dropout (training only)."""
    num_heads: int
    head_dim: int
    scale: float
    attn_dropout: float
    step: int  # query windows per chunk: of each image (per-head passes), of all images (lcsa_windows.py)


def dropout_mask(p: torch.Tensor, rate: float) -> torch.Tensor:
    """Inverted dropout's keep-mask for attention weights ``p`` (kept weights scaled by 1 / (1 - rate)),
    drawn from the current random state: the forward pass and the recomputing backward pass draw it the
    same way (:func:`replayed_rng`)."""
    return (torch.rand_like(p) >= rate).to(p.dtype) / (1 - rate)


def rng_state(device: torch.device) -> torch.Tensor:
    """The random state the dropout masks of ``device`` are drawn from, saved by a forward pass."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


@contextlib.contextmanager
def replayed_rng(state: torch.Tensor, device: torch.device) -> Iterator[None]:
    """Inside: the random state the forward pass saved (:func:`rng_state`), so a recomputing backward pass
    draws the same dropout masks; outside, the random state is what it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if device.type == "cuda":
            torch.cuda.set_rng_state(state, device)
        else:
            torch.set_rng_state(state)
        yield


def routed_attention(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor, w_o: torch.Tensor,
                     b_o: torch.Tensor, rows: torch.Tensor, routed: torch.Tensor, spec: RoutedSpec) -> torch.Tensor:
    """x: B·L×d tokens; rows: B×W×n² query rows per window; routed: B×W×m×n² key rows (eq. 11).
    Returns the projected B·L×d output. Differentiable (recomputing backward) when autograd is on, except
    while tracing for ONNX export, which records the inference passes. Attention dropout (``spec``'s,
    training only) always goes through the written-out eq. (12), with or without autograd."""
    tensors = (x, w_qkv, b_qkv, w_o, b_o)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors) and not torch.jit.is_tracing():
        return _RoutedAttention.apply(x, w_qkv, b_qkv, w_o, b_o, rows, routed, spec)
    return _passes(x, w_qkv, b_qkv, w_o, b_o, rows, routed, spec, written_out=bool(spec.attn_dropout))


def _head_weights(w_qkv: torch.Tensor, b_qkv: torch.Tensor, spec: RoutedSpec, head: int):
    """The rows of the qkv projection (eq. 9) that make one head's Q|K|V (3hd×d weight, 3hd bias), and
    their slices (q, k, v) in the qkv weight."""
    d, hd = w_qkv.shape[1], spec.head_dim
    parts = [slice(i * d + head * hd, i * d + (head + 1) * hd) for i in range(3)]
    return torch.cat([w_qkv[r] for r in parts]), torch.cat([b_qkv[r] for r in parts]), parts


def _chunks(rows: torch.Tensor, routed: torch.Tensor, step: int):
    """(query rows, key rows, windows) of each chunk: ``step`` query windows of every image."""
    for s in range(0, rows.shape[1], step):
        k_rows = routed[:, s:s + step]
        yield rows[:, s:s + step].reshape(-1), k_rows.reshape(-1), k_rows.shape[0] * k_rows.shape[1]


def _split(q: torch.Tensor, kv: torch.Tensor, windows: int):
    """(windows·n²)×hd queries and (windows·m·n²)×2hd K|V of one head -> windows×n²×hd and
    windows×m·n²×hd k and v (strided views, no copies)."""
    k, v = kv.view(windows, -1, 2, kv.shape[1] // 2).unbind(2)
    return q.view(windows, -1, q.shape[1]), k, v


def scaled_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T · scale) v over the last two dims (eq. 12) through SDPA. SDPA's own scale is
    1/sqrt(head_dim), so q is rescaled first (works on every torch with SDPA, also without its ``scale``
    argument). Shared by LCSA's global path and the routed inference chunks."""
    return F.scaled_dot_product_attention(q * (scale * q.shape[-1] ** 0.5), k, v, dropout_p=dropout_p)


def _chunk_inference(q: torch.Tensor, kv: torch.Tensor, windows: int, spec: RoutedSpec) -> torch.Tensor:
    """Eq. (12) of one chunk through :func:`scaled_sdpa`."""
    qh, k, v = (t.unsqueeze(1) for t in _split(q, kv, windows))  # windows×1×r×hd: SDPA's fused kernels want 4-D
    return scaled_sdpa(qh, k, v, spec.scale).view(-1, q.shape[1])


def _chunk_forward(q: torch.Tensor, kv: torch.Tensor, windows: int, spec: RoutedSpec, output: bool = True):
    """Eq. (12) written out for training: (output, softmax P, dropout keep-mask or None, scaled q, k, v
    per window). The mask is drawn here, the same way in the forward and the recomputing backward pass;
    q is scaled before the product (no fp16 overflow of unscaled scores)."""
    qh, k, v = _split(q, kv, windows)
    qh = qh * spec.scale
    p = torch.softmax(qh @ k.transpose(-1, -2), dim=-1)
    keep = dropout_mask(p, spec.attn_dropout) if spec.attn_dropout else None
    out = ((p if keep is None else p * keep) @ v).view(-1, q.shape[1]) if output else None
    return out, p, keep, qh, k, v


def _chunk_backward(d_out: torch.Tensor, p: torch.Tensor, keep: Optional[torch.Tensor], qh: torch.Tensor,
                    k: torch.Tensor, v: torch.Tensor, spec: RoutedSpec) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``_chunk_forward``'s output w.r.t. its queries and gathered K|V, by hand:
    dV = P_d^T dO, dP = (dO V^T) ⊙ keep, dS = P ⊙ (dP - Σ_j dP ⊙ P), dQ = s dS K, dK = dS^T (s Q)."""
    d_o = d_out.view(qh.shape)
    dv = (p if keep is None else p * keep).transpose(-1, -2) @ d_o
    dp = d_o @ v.transpose(-1, -2)
    dp = dp if keep is None else dp * keep
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = ((ds @ k) * spec.scale).view(-1, qh.shape[-1])
    dk = ds.transpose(-1, -2) @ qh  # qh is already scaled
    return dq, torch.cat([dk, dv], -1).view(-1, 2 * qh.shape[-1])


def _passes(x, w_qkv, b_qkv, w_o, b_o, rows, routed, spec: RoutedSpec, written_out: bool) -> torch.Tensor:
    """The routed attention of B·L×d tokens, projected: head by head, chunk by chunk (``written_out``: the
    written-out eq. (12) with dropout masks; otherwise SDPA)."""
    out = None
    for head in range(spec.num_heads):
        cols = slice(head * spec.head_dim, (head + 1) * spec.head_dim)
        qkv = F.linear(x, *_head_weights(w_qkv, b_qkv, spec, head)[:2])  # B·L×3hd: Q | K|V of this head
        q, kv = qkv[:, :spec.head_dim], qkv[:, spec.head_dim:]
        for q_rows, k_rows, windows in _chunks(rows, routed, spec.step):  # a chunk's result replaces its queries
            q_c, kv_c = q.index_select(0, q_rows), kv.index_select(0, k_rows)
            result = _chunk_forward(q_c, kv_c, windows, spec)[0] if written_out else _chunk_inference(
                q_c, kv_c, windows, spec)
            q.index_copy_(0, q_rows, result)
        out = torch.addmm(b_o, q, w_o[:, cols].t()) if out is None else out.addmm_(q, w_o[:, cols].t())
    return out


class _RoutedAttention(torch.autograd.Function):
    """``_passes`` with a backward pass that saves nothing but the tokens, weights and routing (above)."""

    @staticmethod
    def forward(ctx, x, w_qkv, b_qkv, w_o, b_o, rows, routed, spec):
        ctx.spec = spec
        ctx.rng = rng_state(x.device)
        out = _passes(x, w_qkv, b_qkv, w_o, b_o, rows, routed, spec, True)
        ctx.save_for_backward(x, w_qkv, b_qkv, w_o, rows, routed)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w_qkv, b_qkv, w_o, rows, routed = ctx.saved_tensors
        spec = ctx.spec
        need_x, need_w, need_b, need_wo, need_bo = ctx.needs_input_grad[:5]
        # dx and the dK|V rows collect several terms: fp32 sums under low-precision autocast
        acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        dx = torch.zeros(x.shape, dtype=acc, device=x.device) if need_x else None
        dw_qkv = torch.empty_like(w_qkv) if need_w else None
        db_qkv = torch.empty_like(b_qkv) if need_b else None
        dw_o = torch.empty_like(w_o) if need_wo else None
        if need_x or need_w or need_b or need_wo:
            with replayed_rng(ctx.rng, x.device), torch.autocast(x.device.type, enabled=False):  # as the forward
                for head in range(spec.num_heads):
                    _head_backward(x, w_qkv, b_qkv, w_o, rows, routed, grad, spec, head, acc,
                                   dx, dw_qkv, db_qkv, dw_o)
        return (None if dx is None else dx.to(x.dtype), dw_qkv, db_qkv, dw_o, grad.sum(0) if need_bo else None,
                None, None, None)


def _head_backward(x, w_qkv, b_qkv, w_o, rows, routed, grad, spec: RoutedSpec, head: int, acc: torch.dtype,
                   dx: Optional[torch.Tensor], dw_qkv: Optional[torch.Tensor], db_qkv: Optional[torch.Tensor],
                   dw_o: Optional[torch.Tensor]) -> None:
    """One head of ``_RoutedAttention.backward``: recompute its Q|K|V and chunks, write its gradients
    into the given buffers (None: not needed)."""
    hd = spec.head_dim
    cols = slice(head * hd, (head + 1) * hd)
    w_h, b_h, parts = _head_weights(w_qkv, b_qkv, spec, head)
    qkv = F.linear(x, w_h, b_h)
    q, kv = qkv[:, :hd], qkv[:, hd:]
    d_attn = grad @ w_o[:, cols]  # gradient at the head's attention output
    dq = torch.empty(q.shape, dtype=acc, device=x.device)
    dkv = torch.zeros(kv.shape, dtype=acc, device=x.device)
    head_attn = torch.empty_like(q) if dw_o is not None else None
    for q_rows, k_rows, windows in _chunks(rows, routed, spec.step):
        out, *saved = _chunk_forward(q.index_select(0, q_rows), kv.index_select(0, k_rows), windows, spec,
                                     output=head_attn is not None)
        if head_attn is not None:
            head_attn.index_copy_(0, q_rows, out)
        gq, gkv = _chunk_backward(d_attn.index_select(0, q_rows), *saved, spec)
        dq.index_copy_(0, q_rows, gq.to(acc))  # each query row is in one chunk
        dkv.index_add_(0, k_rows, gkv.to(acc))
    if dw_o is not None:
        dw_o[:, cols] = grad.t() @ head_attn
    d_qkv = torch.cat([dq, dkv], 1)
    if dx is not None:
        dx.addmm_(d_qkv, w_h.to(acc))
    if dw_qkv is not None or db_qkv is not None:
        d_qkv = d_qkv.to(x.dtype)
        dw_h = d_qkv.t() @ x if dw_qkv is not None else None
        for i, r in enumerate(parts):
            if dw_qkv is not None:
                dw_qkv[r] = dw_h[i * hd:(i + 1) * hd]
            if db_qkv is not None:
                db_qkv[r] = d_qkv[:, i * hd:(i + 1) * hd].sum(0)
