"""Training loss of LDVC (paper §4.1, following ZegCLIP): 100 × sigmoid focal + 1 × dice.

Each class channel is a binary mask problem on the upsampled logits. Semantics (ZegCLIP's reference
implementation, DESIGN §1.3):

* targets are one-hot over the training classes; a pixel labelled ``ignore_label`` (255: VOC
  background, unseen pixels in the inductive setting, padding) has an all-zero target. With
  ``ignore_as_negative=True`` (ZegCLIP) such pixels still count as negatives of every class; with
  False they are left out of both terms.
* focal: per (image, class) the mean over pixels, summed over *all* (image, class) pairs;
* dice: ``1 - (2 Σ p t + 1) / (Σ p + Σ t + 1)`` per (image, class) pair *present* in the image, summed;
* both divided by the number of present (image, class) pairs, averaged over processes (the
  all-reduced count divided by the world size, at least 1), so every GPU weighs its pairs alike; the
  count is reported to the training loop so accumulation steps weigh their pairs alike too.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.utils import comm

from ..engine.normaliser import note_loss_normaliser

__all__ = ["focal_dice_loss"]


def _num_present(count: torch.Tensor) -> torch.Tensor:
    if comm.get_world_size() > 1:
        count = count.clone()
        torch.distributed.all_reduce(count)
        count = count / comm.get_world_size()
    return count.clamp(min=1.0)


def focal_dice_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_label: int = 255,
    focal_weight: float = 100.0,
    dice_weight: float = 1.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    ignore_as_negative: bool = True,
) -> Dict[str, torch.Tensor]:
    """logits: B×C×H×W (already at label resolution); targets: B×H×W int64 in [0, C) or ignore_label
    (values are checked where labels are read, ``ldvc_d2.data.mapper``, not here: no device sync).

    Returns ``{"loss_focal": focal_weight * focal, "loss_dice": dice_weight * dice}``.
    """
    c = logits.shape[1]
    valid = targets != ignore_label
    classes = torch.arange(c, device=targets.device).view(1, c, 1, 1)
    onehot = (targets.unsqueeze(1) == classes).float()  # 255 pixels: all zero
    weight = None if ignore_as_negative else valid.unsqueeze(1).float()

    logits, onehot = logits.float().flatten(2), onehot.flatten(2)
    prob = logits.sigmoid()
    present = onehot.sum(-1) > 0  # B×C
    count = present.sum().float()
    num = _num_present(count)
    note_loss_normaliser(num, count)  # exact gradient accumulation (ldvc_d2.engine.normaliser)

    ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_t = prob * onehot + (1 - prob) * (1 - onehot)
    alpha_t = alpha * onehot + (1 - alpha) * (1 - onehot)
    focal_map = alpha_t * ce * (1 - p_t) ** gamma
    if weight is None:
        focal = focal_map.mean(-1).sum() / num
        p = prob
    else:
        weight = weight.flatten(2)
        focal = ((focal_map * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)).sum() / num
        p = prob * weight
    dice = 1 - (2 * (p * onehot).sum(-1) + 1) / (p.sum(-1) + onehot.sum(-1) + 1)
    dice = (dice * present).sum() / num
    return {"loss_focal": focal_weight * focal, "loss_dice": dice_weight * dice}
