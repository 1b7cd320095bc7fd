"""Proposal sources of DeOP other than the trained MaskFormer (SEED_SYSTEMS §4.4-4.5), as B×N×h×w logits.

* **ORACLE** :func:`gt_proposals`: one binary mask per class present in the ground truth (all classes of
  the benchmark, unseen ones included, ignore pixels in none). A diagnostic upper bound only: it hands the
  model the extents of unseen objects, which no zero-shot method may know.
* :func:`cluster_proposals`: training-free regions of CLIP's own patch self-correlation, as CLIPtrase makes
  them (T1 q/k/v self-correlation of a block, T6 [CLS] denoising, T7 DBSCAN, T8 smoothed region map); one
  binary mask per region, all patches in one mask when DBSCAN finds no cluster.

Binary masks become logits ±``logit`` (MODEL.DEOP.BINARY_MASK_LOGIT), the rest of the N slots empty
(−``logit``). Masks are ordered by class index (oracle) or DBSCAN label (clusters); more than N are cut to N.
"""
from typing import Sequence, Tuple

import torch

from ..clip.clustering import cluster_patches, dbscan_parameters, denoise_correlation, region_map
from .proposals.network import semantic_to_masks

__all__ = ["binary_to_logits", "cluster_proposals", "gt_proposals"]


def binary_to_logits(masks: torch.Tensor, num: int, logit: float) -> torch.Tensor:
    """K×H×W binary masks → N×H×W logits ±``logit``: the first min(K, N) masks, then empty slots."""
    out = masks.new_full((num, *masks.shape[-2:]), -float(logit))
    k = min(num, masks.shape[0])
    out[:k] = (masks[:k].float() * 2 - 1) * float(logit)
    return out


def gt_proposals(labels: torch.Tensor, num: int, logit: float, ignore_label: int) -> torch.Tensor:
    """ORACLE. labels B×H×W (class indices of the full benchmark, ``ignore_label`` = none) → B×N×H×W logits."""
    return torch.stack([binary_to_logits(semantic_to_masks(label, ignore_label)[0], num, logit) for label in labels])


def cluster_proposals(correlation: torch.Tensor, grid: Tuple[int, int], size: Sequence[int], num: int, logit: float,
                      *, eps: float, min_samples: int, scale: str = "grid", ratio: int = 4,
                      median_size: int = 7) -> torch.Tensor:
    """correlation R B×(1+hw)×(1+hw) of a plain CLIP block → B×N×H×W logits of its DBSCAN regions at ``size``."""
    h, w = int(grid[0]), int(grid[1])
    e, m = dbscan_parameters(eps, min_samples, h * w, scale)
    out = []
    for r in correlation:
        weights = denoise_correlation(r)
        labels = cluster_patches(weights, e, m)
        if int(labels.max()) < 0:
            masks = weights.new_ones(1, *size)
        else:
            regions = region_map(weights, labels, (h, w), tuple(int(s) for s in size), ratio, median_size)
            masks = (regions[None] == torch.arange(int(regions.max()) + 1, device=regions.device)[:, None, None])
        out.append(binary_to_logits(masks.float(), num, logit))
    return torch.stack(out)
