"""CLIPtrase (seed 001): training-free segmentation by recalibrated patch self-correlation.

Pieces, in the order of SEED_SYSTEMS.md §2.1: T1 :func:`self_correlation` (tap at block L−2 via
:func:`cliptrase_hooks`), T2 :class:`SelfCorrelationAttention` (block L−1), T5/T5' :func:`patch_logits`,
T6 :func:`denoise_correlation`, T7 :func:`cluster_patches` with :func:`dbscan_parameters`, T8
:func:`region_map`, T9 :func:`vote_hard` / :func:`vote_soft`, T10 :func:`collapse_background`, and
T7-T10 for one image in :func:`refine_with_regions`. Class embeddings (T4) come from
``clip.TemplateEnsembleTextEncoder``.
"""
from ..clip.clustering import REFERENCE_POINTS, cluster_patches, dbscan_parameters
from .meta_arch import CLIPtrase, ClassEmbeddings
from .correlation import (
    SelfCorrelationAttention, check_branches, cliptrase_hooks, denoise_correlation, patch_logits, self_correlation,
)
from .regions import (
    RegionVote, cluster_maps, collapse_background, refine_with_regions, region_map, vote_hard, vote_soft,
)

__all__ = [
    "CLIPtrase", "ClassEmbeddings", "REFERENCE_POINTS", "RegionVote", "SelfCorrelationAttention", "check_branches", "cliptrase_hooks",
    "cluster_maps", "cluster_patches", "collapse_background", "dbscan_parameters", "denoise_correlation",
    "patch_logits", "refine_with_regions", "region_map", "self_correlation", "vote_hard", "vote_soft",
]
