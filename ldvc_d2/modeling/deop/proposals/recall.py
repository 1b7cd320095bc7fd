"""Recall of mask proposals (DeOP supplement Table 8: Recall@30 / Recall@50 on COCO-Stuff).

A ground-truth segment (the pixels of one class in one image, ignore pixels excluded) is recalled at IoU
threshold t when some proposal's binary mask (σ(M_n) > 0.5) overlaps it with IoU ≥ t. The paper reports
the recalled fraction over all segments and over the segments of unseen classes; it does not say how a
segment is defined, so class regions (semantic segments) are used here, as the training targets are.
"""
from typing import Dict, Sequence

import torch
import torch.nn.functional as F

__all__ = ["proposal_recall", "segment_best_iou"]


def segment_best_iou(mask_logits: torch.Tensor, label: torch.Tensor, ignore_label: int = 255) -> Dict[int, float]:
    """N×h×w proposal logits (any resolution) and an H×W label map -> {class: best IoU of its segment}.

    The proposals are resized bilinearly to H×W before thresholding; ignore pixels count for no segment
    and no proposal.
    """
    logits = F.interpolate(mask_logits[None].float(), size=label.shape[-2:], mode="bilinear", align_corners=False)[0]
    valid = label != ignore_label
    proposals = (logits.sigmoid() > 0.5) & valid
    best = {}
    for c in torch.unique(label[valid]).tolist():
        segment = label == c
        inter = (proposals & segment).flatten(1).sum(1).float()
        union = (proposals | segment).flatten(1).sum(1).float()
        best[int(c)] = float((inter / union).max()) if len(inter) else 0.0
    return best


def proposal_recall(best_ious: Sequence[Dict[int, float]], threshold: float, classes: Sequence[int] = ()) -> float:
    """Fraction of segments (of ``classes``, or all) whose best IoU reaches ``threshold``."""
    values = [iou for per_image in best_ious for c, iou in per_image.items() if not classes or c in classes]
    return sum(v >= threshold for v in values) / max(len(values), 1)
