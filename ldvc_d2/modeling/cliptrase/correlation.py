"""CLIPtrase's self-correlation pieces on q/k/v of CLIP blocks (seed 001, SEED_SYSTEMS.md §2.1).

Shapes: q, k, v are B×H×N×d_h (N = 1 + h·w, [CLS] first, as given by ``clip.surgery.block_qkv``);
"branches" name which of q, k, v enter a formula ("q", "k", "v"; CLIPtrase uses all three, SCLIP's
correlative self-attention uses ["q", "k"]). T1 and T6 (:func:`self_correlation`,
:func:`denoise_correlation`) live in ``clip.clustering``, shared with DeOP's cluster proposals.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..clip.attention import SelfCorrelationAttention  # (T2) A_h = Σ_a softmax(s a_h a_hᵀ), shared with SCLIP
from ..clip.clustering import BRANCHES, check_branches, denoise_correlation, self_correlation
from ..clip.surgery import BlockHook

__all__ = [
    "SelfCorrelationAttention", "check_branches", "cliptrase_hooks", "denoise_correlation", "patch_logits",
    "self_correlation",
]


def cliptrase_hooks(correlation_layer: int = -2, attention_layer: int = -1,
                    correlation_branches: Sequence[str] = BRANCHES,
                    attention_branches: Sequence[str] = BRANCHES) -> List[BlockHook]:
    """The two block hooks of CLIPtrase: a T1 tap named "correlation" and the T2 attention.

    The official code taps block 10 and replaces block 11 of ViT-B/16 (``clip_utils/model.py:248-251``),
    i.e. layers -2 and -1. Pass the returned list to ``PromptedVisionEncoder.forward(hooks=...)``.
    """
    check_branches(correlation_branches, "correlation branches")

    def tap(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self_correlation(q, k, v, correlation_branches)

    return [
        BlockHook(layer=correlation_layer, tap=tap, name="correlation"),
        BlockHook(layer=attention_layer, attn_fn=SelfCorrelationAttention(attention_branches)),
    ]


def patch_logits(dense: torch.Tensor, text: torch.Tensor, logit_scale: float, size: Tuple[int, int],
                 global_feat: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(T5, T5') Class logits of one image: C×H×W.

    dense: d×h×w L2-normalised patch features; text: C×d L2-normalised; ``logit_scale`` = e^{logit_scale}
    of CLIP (100 for OpenAI). Logits are bilinearly resized to ``size`` (``clip_self_correlation.py:154-158``).
    With ``global_feat`` (d, the normalised [CLS] feature of the *modified* last block) every class map is
    multiplied by its image-level logit (VOC20 only in the official code, ``:159-161``).
    """
    logits = logit_scale * torch.einsum("dhw,cd->chw", dense, text)
    logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    if global_feat is not None:
        logits = logits * (logit_scale * text @ global_feat[:, None])[:, :, None]  # C×1×1 (2-D matmul for fvcore)
    return logits
