"""CLIPtrase's regions and voting (T8-T10, SEED_SYSTEMS.md §2.1), one image at a time.

T7/T8 (:func:`cluster_patches`, :func:`cluster_maps`, :func:`region_map`) live in ``clip.clustering``,
shared with DeOP's cluster proposals.

The clusters of W (T7) become smooth region masks at image resolution, and the pixels of a region
decide its class jointly ("pixels in a mask jointly decide", supplement). Official code:
``clip_self_correlation.py:172-214`` (script: hard vote, background words) and
``cliptrase_d2/cliptrase/model/CLIPtrase.py:150-169`` (D2: soft vote).
"""
from typing import NamedTuple, Optional, Tuple

import torch

from ..clip.clustering import cluster_maps, cluster_patches, region_map

__all__ = [
    "RegionVote", "cluster_maps", "collapse_background", "refine_with_regions", "region_map", "vote_hard",
    "vote_soft",
]


def vote_hard(pred: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(T9, script) Each region takes the mode of the pixel classes ``pred`` inside it: H×W long.

    Ties go to the smallest class index, as ``torch.unique`` + ``argmax`` in ``:203-210``.
    """
    num_classes = int(pred.max()) + 1
    num_regions = int(regions.max()) + 1
    counts = torch.bincount((regions * num_classes + pred).flatten(), minlength=num_regions * num_classes)
    return counts.reshape(num_regions, num_classes).argmax(dim=1)[regions]


def vote_soft(logits: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(T9, D2 version) Every pixel's logits become the mean logits of its region: C×H×W.

    ``CLIPtrase.py:167-169`` of the official detectron2 version.
    """
    c = logits.shape[0]
    flat = regions.flatten()
    num_regions = int(flat.max()) + 1
    sums = logits.new_zeros(num_regions, c).index_add_(0, flat, logits.reshape(c, -1).T)
    means = sums / torch.bincount(flat, minlength=num_regions).clamp(min=1)[:, None].to(logits.dtype)
    return means[regions].permute(2, 0, 1)


def collapse_background(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(T10) Any index ≥ ``num_classes`` (a background word appended after the C classes) becomes C."""
    return pred.clamp(max=num_classes)


class RegionVote(NamedTuple):
    """Result of :func:`refine_with_regions` for one image.

    pred: H×W long class map (C = background when background words were appended).
    logits: C'×H×W logits after the vote (soft: region means; hard or K = 0: the input logits).
    regions: H×W long region map, or None when DBSCAN found no cluster (K = 0).
    """

    pred: torch.Tensor
    logits: torch.Tensor
    regions: Optional[torch.Tensor]


def refine_with_regions(logits: torch.Tensor, weights: torch.Tensor, grid: Tuple[int, int], *, eps: float,
                        min_samples: int, vote: str = "hard", num_classes: Optional[int] = None,
                        ratio: int = 4, median_size: int = 7) -> RegionVote:
    """T7-T10 for one image: cluster W (hw×hw), build regions at the logits' size, vote.

    logits: C'×H×W (T5); ``num_classes`` = C when C' − C background words follow the classes (T10,
    applied to the pixel argmax before the vote and again after it), None otherwise. With K = 0 (all
    patches noise) the prediction is the pixel argmax (``clip_self_correlation.py:172-177``).
    """
    if vote not in ("hard", "soft"):
        raise ValueError(f"MODEL.CLIPTRASE.VOTE must be 'hard' or 'soft', got '{vote}'.")

    def collapse(p: torch.Tensor) -> torch.Tensor:
        return p if num_classes is None else collapse_background(p, num_classes)

    labels = cluster_patches(weights, eps, min_samples)
    if int(labels.max()) < 0:
        return RegionVote(collapse(logits.argmax(dim=0)), logits, None)
    regions = region_map(weights, labels, grid, tuple(logits.shape[-2:]), ratio, median_size)
    if vote == "soft":
        logits = vote_soft(logits, regions)
        return RegionVote(collapse(logits.argmax(dim=0)), logits, regions)
    return RegionVote(collapse(vote_hard(collapse(logits.argmax(dim=0)), regions)), logits, regions)
