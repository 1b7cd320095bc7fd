"""CLIP surgery: read the q/k/v of an open_clip block and run it with a replaced attention.

SEED_SYSTEMS.md §1.1, shared by CLIPtrase (seed 001: correlation tap at block L-2, self-correlation
attention in block L-1) and DeOP (gradient-free patch severance). An open_clip
``ResidualAttentionBlock`` computes

    x' = x + ls_1(MHA(ln_1(x)))            MHA = W_o · concat_h softmax(q_h k_hᵀ / √d_h) v_h + b_o
    y  = x' + ls_2(mlp(ln_2(x')))

with [q k v] = ln_1(x) W_inᵀ + b_in (``attn.in_proj_weight`` 3D×D, ``attn.in_proj_bias``). The two
functions below expose exactly these pieces (S1, S2) on batch-first ``B×N×D`` tensors; the block's own
``batch_first`` flag does not matter because only its weights are used. Blocks with another attention
(open_clip's ``CustomResidualAttentionBlock``: scaled-cosine attention, head scaling, ``ln_attn``) are
rejected with an error, because their attention is not the decomposition above.

:class:`BlockHook` is the per-block request understood by ``PromptedVisionEncoder.forward(hooks=...)``.
"""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttnFn", "BlockHook", "block_qkv", "check_block", "run_block_with_attention"]

# (q, k, v), each B×H×N×d_h -> per-head outputs B×H×N×d_h.
AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_BLOCK_PARTS = ("ln_1", "ls_1", "ln_2", "mlp", "ls_2")


def check_block(block: nn.Module, where: str = "") -> nn.MultiheadAttention:
    """Return ``block.attn`` if the block decomposes as in the module docstring, else raise.

    ``where`` names the model/layer in the message (e.g. "VisionTransformer block 10").
    """
    attn = getattr(block, "attn", None)
    ok = isinstance(attn, nn.MultiheadAttention) and all(hasattr(block, p) for p in _BLOCK_PARTS)
    ok = ok and not hasattr(block, "ln_attn") and not hasattr(block, "ln_1_kv")
    if ok:
        ok = attn._qkv_same_embed_dim and attn.in_proj_weight is not None and attn.bias_k is None
        ok = ok and not attn.add_zero_attn
    if not ok:
        raise NotImplementedError(
            f"CLIP surgery (q/k/v hooks, attention replacement): {where + ': ' if where else ''}block "
            f"{type(block).__name__} with attention {type(attn).__name__} cannot be decomposed. Only "
            "open_clip ResidualAttentionBlock with nn.MultiheadAttention (packed in_proj, no bias_k/v) is "
            "supported, not CustomResidualAttentionBlock (scaled-cosine attention / head scaling). "
            "Choose a MODEL.CLIP.MODEL with standard ViT blocks, e.g. ViT-B-16 or ViT-L-14."
        )
    return attn


def block_qkv(block: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S1) q, k, v of ``block`` for the batch-first tokens ``x`` (B×N×D): each B×H×N×d_h.

    z = ln_1(x); [q k v] = z W_inᵀ + b_in, split into H heads. Biases included, no 1/√d_h scaling.
    """
    attn = check_block(block)
    b, n, d = x.shape
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.reshape(b, n, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def run_block_with_attention(block: nn.Module, x: torch.Tensor, attn_fn: AttnFn, *, residual: bool = True,
                             ffn: bool = True) -> torch.Tensor:
    """(S2) Run ``block`` on batch-first ``x`` (B×N×D) with its attention replaced by ``attn_fn``.

    x' = x + ls_1(W_o concat_h(attn_fn(q, k, v)) + b_o); returns x' + ls_2(mlp(ln_2(x'))), B×N×D.
    ``residual=False`` drops the skip connection: x' = W_o concat_h(attn_fn(q, k, v)) + b_o (without ls_1,
    as ClearCLIP's and NACLIP's released code, which return the attention output directly); ``ffn=False``
    drops the feed-forward branch (y = x'). The training-free methods (ClearCLIP, NACLIP, MaskCLIP's
    harness form) remove both in the last block.
    """
    attn = check_block(block)
    q, k, v = block_qkv(block, x)
    out = attn_fn(q, k, v)
    if out.shape != q.shape:
        raise ValueError(f"attn_fn must return per-head outputs of shape {tuple(q.shape)}, got {tuple(out.shape)}.")
    out = F.linear(out.transpose(1, 2).reshape(x.shape), attn.out_proj.weight, attn.out_proj.bias)
    x = x + block.ls_1(out) if residual else out
    return x + block.ls_2(block.mlp(block.ln_2(x))) if ffn else x


@dataclass
class BlockHook:
    """A request for one block of ``PromptedVisionEncoder.forward(images, hooks=[...])``.

    Args:
        layer: 0-based block index; negative counts from the end (-1 = last block).
        tap: optional ``fn(q, k, v) -> Tensor`` on the q/k/v (B×H×N×d_h) of the [CLS] and patch tokens
            (N = 1 + h·w, prompt tokens excluded); its result is returned under ``name``.
        name: output key of ``tap`` (required with ``tap``; must not clash with other outputs).
        attn_fn: optional replacement of the block's attention over [CLS] + patch tokens (see
            :func:`run_block_with_attention`). Prompt tokens are left out of a replaced block.
        residual / ffn: with ``attn_fn``, keep the block's skip connection / feed-forward branch
            (:func:`run_block_with_attention`); both True = the block's own structure.
    """

    layer: int
    tap: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None
    name: str = ""
    attn_fn: Optional[AttnFn] = None
    residual: bool = True
    ffn: bool = True

    def __post_init__(self):
        if self.tap is None and self.attn_fn is None:
            raise ValueError(f"BlockHook(layer={self.layer}) needs a tap, an attn_fn, or both.")
        if self.tap is not None and not self.name:
            raise ValueError(f"BlockHook(layer={self.layer}) with a tap needs a name (its output key).")
        if self.attn_fn is None and not (self.residual and self.ffn):
            raise ValueError(f"BlockHook(layer={self.layer}): residual/ffn switches need an attn_fn.")
