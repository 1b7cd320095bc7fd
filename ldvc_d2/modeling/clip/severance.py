"""Patch severance in CLIP's last block(s) (DeOP, seed 004, §3.2 eq. 1-2; SEED_SYSTEMS D3/D3′).

CLIP's attention mixes every patch token with the others, so dense patch features stop being local.
DeOP "severs" patches from each other in the last block(s); three variants, each an ``attn_fn`` for a
:class:`~ldvc_d2.modeling.clip.surgery.BlockHook` (q, k, v of [CLS] + patches, B×H×N×d_h, N = 1 + h·w;
prompt tokens never enter a replaced block):

* **GPS**, paper eq. 2: o = (α E + (1 − α) softmax(s q kᵀ)) v, s = d_h^-1/2, α per layer. α = 0 is CLIP's
  own block, α = 1 gives x + W_o v + b_o followed by the MLP (the paper's best at the last layer).
* **Mask-weighted GPS**, what the released code runs by default (SEED_SYSTEMS D3): the identity term is
  scaled per token by w_l = Σ_n m_{n,l}, m = σ(proposal mask logits) resized bilinearly to the patch grid,
  the [CLS] column set to 1 (so w_[CLS] = N): o = α diag(w) v + (1 − α) softmax(s q kᵀ) v (the code has
  α = 1 hard-wired; α < 1 is our generalisation).
* **Mask-guided PS**, paper eq. 1 (D3′): A_ij = softmax_j(Σ_n m_{n,i} m_{n,j}), o = A v, same m.

:func:`severance_hooks` builds the hooks of one forward pass (the mask variants need that pass's masks on
the token grid, :func:`token_mask_weights`, which the caller computes once: DeOP's CAL uses them too).
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .surgery import BlockHook

__all__ = ["GPS_MODES", "MaskGuidedSeverance", "PatchSeverance", "check_severance_alpha", "severance_hooks",
           "token_mask_weights"]

GPS_MODES = ("gps", "mask_weighted", "mask_guided")


class PatchSeverance:
    """(eq. 2 / D3) o = α·diag(w)·v + (1 − α)·softmax(s q kᵀ)·v, per head.

    Args:
        alpha: the identity weight α in [0, 1].
        token_weight: optional B×N per-token weight w of the identity term (mask-weighted GPS); None = 1.
        scale: s, default d_h^-1/2 (CLIP's).
    """

    def __init__(self, alpha: float, token_weight: Optional[torch.Tensor] = None, scale: Optional[float] = None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Patch severance: alpha (MODEL.DEOP.GPS_ALPHA / MODEL.CLIP.PATCH_SEVERANCE_ALPHA) "
                             f"must be in [0, 1], got {alpha}.")
        self.alpha = float(alpha)
        self.token_weight = token_weight
        self.scale = scale

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ident = v if self.token_weight is None else self.token_weight[:, None, :, None].to(v.dtype) * v
        if self.alpha == 1.0:  # the softmax term is multiplied by 0: skip it
            return ident
        s = q.shape[-1] ** -0.5 if self.scale is None else self.scale
        mixed = torch.softmax(s * q @ k.transpose(-1, -2), dim=-1) @ v
        return self.alpha * ident + (1.0 - self.alpha) * mixed


class MaskGuidedSeverance:
    """(eq. 1 / D3′) A_ij = softmax_j(Σ_n m_{n,i} m_{n,j}) shared by all heads; o = A v.

    masks: B×P×N token masks m in [0, 1] (:func:`token_mask_weights`).
    """

    def __init__(self, masks: torch.Tensor):
        self.masks = masks

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        m = self.masks.to(v.dtype)
        attn = torch.softmax(m.transpose(1, 2) @ m, dim=-1)  # B×N×N
        return attn[:, None] @ v


def token_mask_weights(mask_logits: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Proposal mask logits B×P×H×W → per-token masks B×P×(1+hw) over [CLS] + patches.

    m = σ(bilinear resize of the logits to ``grid`` (h, w)), flattened, with a [CLS] column of ones
    (released code). Mask-weighted severance weighs token l by w_l = Σ_n m_{n,l}.
    """
    b, p = mask_logits.shape[:2]
    small = F.interpolate(mask_logits.float(), size=tuple(int(g) for g in grid), mode="bilinear", align_corners=False)
    m = torch.cat([small.new_ones(b, p, 1), small.sigmoid().flatten(2)], dim=2)
    return m


def check_severance_alpha(key: str, layers: Sequence[int], alphas: Sequence[float]) -> List[str]:
    """Config problems of ``<key>_LAYERS`` / ``<key>_ALPHA`` (one α for all layers or one per layer, each in [0, 1])."""
    problems = []
    if layers and len(alphas) not in (1, len(layers)):
        problems.append(f"{key}_ALPHA has {len(alphas)} values for {len(layers)} layers; give 1 or one per layer")
    if any(not 0.0 <= a <= 1.0 for a in alphas):
        problems.append(f"{key}_ALPHA values must be in [0, 1], got {list(alphas)}")
    return problems


def severance_hooks(layers: Sequence[int], alphas: Union[float, Sequence[float]], mode: str = "gps",
                    token_masks: Optional[torch.Tensor] = None) -> List[BlockHook]:
    """The attention replacements of one forward pass: one :class:`BlockHook` per entry of ``layers``.

    alphas: one α for all layers or one per layer. mode: "gps", "mask_weighted" or "mask_guided" (the
    latter two need the proposal masks as ``token_masks`` B×P×(1+h·w), :func:`token_mask_weights` of the
    mask logits; α is unused by "mask_guided").
    """
    if mode not in GPS_MODES:
        raise ValueError(f"MODEL.DEOP.GPS_MODE must be one of {list(GPS_MODES)}, got '{mode}'.")
    layers = list(layers)
    alphas = [float(alphas)] * len(layers) if isinstance(alphas, (int, float)) else [float(a) for a in alphas]
    if len(alphas) == 1 and len(layers) > 1:
        alphas = alphas * len(layers)
    if len(alphas) != len(layers):
        raise ValueError(f"Patch severance: {len(alphas)} alphas for {len(layers)} layers {layers}; give one "
                         "alpha, or one per layer (MODEL.DEOP.GPS_ALPHA / MODEL.CLIP.PATCH_SEVERANCE_ALPHA).")
    if mode != "gps" and token_masks is None:
        raise ValueError(f"Patch severance mode '{mode}' needs the proposal masks on the token grid "
                         "(token_masks = token_mask_weights(mask logits, patch grid)).")
    if token_masks is not None and token_masks.dim() != 3:
        raise ValueError(f"severance_hooks: token_masks must be B×P×(1+h·w) (token_mask_weights), got shape "
                         f"{tuple(token_masks.shape)}.")
    if mode == "gps":
        return [BlockHook(layer=i, attn_fn=PatchSeverance(a)) for i, a in zip(layers, alphas)]
    if mode == "mask_weighted":
        weight = token_masks.sum(dim=1)
        return [BlockHook(layer=i, attn_fn=PatchSeverance(a, token_weight=weight)) for i, a in zip(layers, alphas)]
    return [BlockHook(layer=i, attn_fn=MaskGuidedSeverance(token_masks)) for i in layers]
