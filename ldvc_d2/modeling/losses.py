"""Training loss of LDVC (paper §4.1, following ZegCLIP): 100 × sigmoid focal + 1 × dice.

Each class channel is a binary mask problem on the upsampled logits. Semantics (ZegCLIP's reference
implementation, DESIGN §1.3):

* targets are one-hot over the training classes; a pixel labelled ``ignore_label`` (255: VOC
  background, unseen pixels in the inductive setting, padding) has an all-zero target. With
  ``ignore_as_negative=True`` (ZegCLIP) such pixels still count as negatives of every class; with
  False they are left out of both terms.
* focal: per (image, class) the mean over pixels, summed over *all* (image, class) pairs;
* dice: ``1 - (2 Σ p t + 1) / (Σ p + Σ t + 1)`` per (image, class) pair *present* in the image, summed;
* the per-pixel terms are computed in blocks of (image, class) rows (``_CHUNK_ELEMENTS``), recomputed in
  the backward unless the step has few of them (``_KEEP_ELEMENTS``);
* both divided by the number of present (image, class) pairs, averaged over processes (the
  all-reduced count divided by the world size, at least 1), so every GPU weighs its pairs alike; the
  count is reported to the training loop so accumulation steps weigh their pairs alike too.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch.utils.checkpoint import checkpoint

from ..utils.normaliser import note_loss_normaliser

__all__ = ["focal_dice_loss"]

# Floats of per-pixel terms computed at once. The C×H×W terms are formed a block of (image, class) rows at
# a time and, with autograd, recomputed in the backward pass (checkpointing) instead of being kept: a
# step's loss holds its logits and per-row sums, not the ~10 full-resolution fp32 maps of the formula.
# Values do not depend on it.
_CHUNK_ELEMENTS = 2 ** 22
# Up to this many per-pixel terms per step (B·C·H·W) they are kept for the backward instead of recomputed:
# at most ~10 maps of 2^21 floats (~80 MiB), and half the loss's time (the shapes quick start, 4×12×128²:
# 22 vs 44 ms per step, one thread). The gradients are the same: the same operations, run once.
_KEEP_ELEMENTS = 2 ** 21


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
    b, c = logits.shape[:2]
    valid = targets != ignore_label
    flat_targets = targets.flatten(1)
    # pixels per (image, class); ignore_label and any other value outside [0, C) go to a dropped column C
    inside = (flat_targets >= 0) & (flat_targets < c)
    binned = torch.where(inside, flat_targets, torch.full_like(flat_targets, c)).long()
    ones = torch.ones_like(binned, dtype=torch.float)
    t_sum = torch.zeros(b, c + 1, device=targets.device).scatter_add_(1, binned, ones)[:, :c]
    present = t_sum > 0  # B×C
    count = present.sum().float()
    num = _num_present(count)
    note_loss_normaliser(num, count)  # exact gradient accumulation (ldvc_d2.utils.normaliser)

    weight = None if ignore_as_negative else valid.flatten(1).float()
    rows = logits.float().flatten(2).flatten(0, 1)  # (B·C)×(H·W)
    step = max(1, _CHUNK_ELEMENTS // max(rows.shape[1], 1))
    recompute = torch.is_grad_enabled() and rows.numel() > _KEEP_ELEMENTS
    sums = []
    for start in range(0, b * c, step):
        index = torch.arange(start, min(start + step, b * c), device=rows.device)
        args = (rows[start:start + step], flat_targets, index, c, alpha, gamma, weight)
        sums.append(checkpoint(_row_sums, *args, use_reentrant=False) if recompute else _row_sums(*args))
    focal_sum, pt_sum, p_sum = torch.cat(sums).view(b, c, 3).unbind(-1)
    pixels = rows.shape[1] if weight is None else weight.sum(-1, keepdim=True).clamp(min=1.0)
    focal = (focal_sum / pixels).sum() / num
    dice = 1 - (2 * pt_sum + 1) / (p_sum + t_sum + 1)
    dice = (dice * present).sum() / num
    return {"loss_focal": focal_weight * focal, "loss_dice": dice_weight * dice}


def _row_sums(logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor, c: int, alpha: float, gamma: float,
              weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-pixel focal and dice terms of the (image, class) rows ``index`` of the flattened B·C rows
    (logits: rows×N; targets: B×N; weight: B×N or None), summed over pixels: rows×3 (focal, Σ p·t, Σ p)."""
    image = index // c
    onehot = (targets[image] == (index % c).unsqueeze(1)).float()  # ignore pixels: all zero
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_t = prob * onehot + (1 - prob) * (1 - onehot)
    alpha_t = alpha * onehot + (1 - alpha) * (1 - onehot)
    focal_map = alpha_t * ce * (1 - p_t) ** gamma
    if weight is not None:
        focal_map = focal_map * weight[image]
        prob = prob * weight[image]
    return torch.stack([focal_map.sum(-1), (prob * onehot).sum(-1), prob.sum(-1)], dim=1)
