"""DeOP's semantic output (D9) and training loss (D10) (seed 004 §3.4; SEED_SYSTEMS D9-D10).

Proposal masks and their class distributions combine into per-class maps
S′_c(x) = Σ_n softmax(ℓ_n)_c · σ(M_n(x)), c = 0…C (C = no-object), masks bilinearly resized first.

* (D9) inference: S_c = S′_c for c < C (no-object dropped), no calibration, no CLIP ensemble.
* (D10) training, released recipe (the paper says only "dice + focal"): p = σ(k·S′ − k), k = OUTPUT_SIG;
  targets one-hot over C+1 channels where ignore pixels (unseen objects, VOC background, padding) become
  the **no-object** channel; L_focal = mean over pixels × channels of −α_t (1−p_t)² log clamp(p_t, 1e-4,
  1−1e-4), α = 0.25; L_dice = mean over images of 1 − (2Σpy + 1)/(Σp + Σy + 1) over the first
  ``num_dice`` channels flattened together (one dice per image). L = w_f·L_focal + w_d·L_dice (2.0, 0.8).
* "paper" option: the shared per-class sigmoid focal + dice of :func:`~ldvc_d2.modeling.losses.focal_dice_loss`
  on the C class channels of the logits k·S′ − k (ignore pixels negatives of every class).
"""
from typing import Dict, Sequence

import torch
import torch.nn.functional as F

from ..losses import focal_dice_loss

__all__ = ["combine_proposals", "deop_loss", "released_loss"]


def combine_proposals(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """ℓ B×N×K and mask logits B×N×h×w → S′ B×K×H×W = Σ_n softmax(ℓ_n)_c σ(M_n↑) at ``size`` (H, W)."""
    masks = F.interpolate(mask_logits.float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return torch.einsum("bnc,bnhw->bchw", class_logits.float().softmax(dim=-1), masks.sigmoid())


def released_loss(scores: torch.Tensor, targets: torch.Tensor, *, ignore_label: int, output_sig: float = 3.0,
                  num_dice: int = 0, alpha: float = 0.25) -> Dict[str, torch.Tensor]:
    """(D10) scores S′ B×(C+1)×H×W, targets B×H×W in [0, C) or ``ignore_label`` → unweighted terms.

    num_dice: channels of the per-image dice (0 = the C class channels, the released LOSS_NUM_CLASS).
    """
    c1 = scores.shape[1]
    labels = torch.where(targets == ignore_label, torch.full_like(targets, c1 - 1), targets)
    y = F.one_hot(labels, c1).permute(0, 3, 1, 2).to(scores.dtype)
    p = torch.sigmoid(output_sig * scores - output_sig)
    p_t = (p * y + (1 - p) * (1 - y)).clamp(1e-4, 1 - 1e-4)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    focal = (-alpha_t * (1 - p_t) ** 2 * p_t.log()).mean()
    k = num_dice or c1 - 1
    pf, yf = p[:, :k].flatten(1), y[:, :k].flatten(1)
    dice = (1 - (2 * (pf * yf).sum(1) + 1) / (pf.sum(1) + yf.sum(1) + 1)).mean()
    return {"loss_focal": focal, "loss_dice": dice}


def deop_loss(scores: torch.Tensor, targets: torch.Tensor, *, kind: str, weights: Sequence[float], ignore_label: int,
              output_sig: float, num_dice: int = 0) -> Dict[str, torch.Tensor]:
    """S′ B×(C+1)×H×W and targets B×H×W → weighted losses; ``kind`` "released" (D10) or "paper"."""
    if kind == "released":
        terms = released_loss(scores, targets, ignore_label=ignore_label, output_sig=output_sig, num_dice=num_dice)
        return {"loss_focal": weights[0] * terms["loss_focal"], "loss_dice": weights[1] * terms["loss_dice"]}
    if kind == "paper":
        return focal_dice_loss(output_sig * scores[:, :-1] - output_sig, targets, ignore_label=ignore_label,
                               focal_weight=weights[0], dice_weight=weights[1])
    raise ValueError(f"MODEL.DEOP.LOSS must be 'released' or 'paper', got '{kind}'.")
