"""Patch self-correlation and its DBSCAN regions, shared by CLIPtrase (seed 001) and DeOP's training-free
"clusters" proposals (SEED_SYSTEMS §2.1 T1, T6-T8; §4.4).

Shapes: q, k, v are B×H×N×d_h (N = 1 + h·w, [CLS] first, as given by ``surgery.block_qkv``); "branches"
name which of q, k, v enter a formula ("q", "k", "v"; CLIPtrase uses all three). scikit-learn's DBSCAN is
used as CLIPtrase's official code does (``clip_self_correlation.py:168-169``): Euclidean distance between
rows of W, radius ``eps``, ``min_samples`` counting the point itself; noise gets label −1, clusters 0…K−1.
"""
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

# scikit-learn and SciPy (install requirements) are imported where they are used, not with the package:
# together with pandas they add over a second to every process that imports ldvc_d2 (train_net.py and
# each of its spawned workers), most of which never cluster.

__all__ = [
    "BRANCHES", "REFERENCE_POINTS", "check_branches", "cluster_maps", "cluster_patches", "dbscan_parameters",
    "denoise_correlation", "pick_branches", "region_map", "self_correlation",
]

BRANCHES = ("q", "k", "v")
# The official ε/m were tuned at 224 px on ViT-B/16: a 14×14 grid.
REFERENCE_POINTS = 196


def check_branches(branches: Sequence[str], key: str = "branches") -> Tuple[str, ...]:
    """Validate a non-empty list of distinct names from ("q", "k", "v"); ``key`` names the config key."""
    branches = tuple(branches)
    if not branches or len(set(branches)) != len(branches) or any(b not in BRANCHES for b in branches):
        raise ValueError(f"{key} must be distinct entries of ['q', 'k', 'v'] (at least one), got {list(branches)}.")
    return branches


def pick_branches(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, branches: Sequence[str]) -> List[torch.Tensor]:
    """The tensors named by ``branches``, in that order."""
    named: Dict[str, torch.Tensor] = {"q": q, "k": k, "v": v}
    return [named[b] for b in branches]


def self_correlation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     branches: Sequence[str] = BRANCHES) -> torch.Tensor:
    """(T1) R = 1/(|branches|·H) Σ_h Σ_a cos(a_h, a_h): B×N×N, symmetric, diagonal 1, |R| ≤ 1.

    Supplement eq. (1)-(3): per-head cosine self-similarity of each branch, averaged over the branches
    and the heads (official ``clip_utils/attn2.py:295-308`` per branch, head mean ``:336-340``).
    """
    branches = check_branches(branches)
    total = sum(F.normalize(a, dim=-1) @ F.normalize(a, dim=-1).transpose(-1, -2)
                for a in pick_branches(q, k, v, branches))
    return total.mean(dim=1) / len(branches)


def denoise_correlation(correlation: torch.Tensor) -> torch.Tensor:
    """(T6) W_ij = max(0, R_ij − R_0j) over patch indices: (…)×N×N -> (…)×hw×hw.

    Row 0 is the [CLS] token's correlation with every patch; subtracting it removes the "global patch"
    component (official ``clip_self_correlation.py:148-152``).
    """
    return (correlation[..., 1:, 1:] - correlation[..., :1, 1:]).clamp(min=0)


def dbscan_parameters(eps: float, min_samples: int, num_points: int, rule: str = "fixed") -> Tuple[float, int]:
    """ε and m for a W of ``num_points`` rows (= h·w patches).

    "fixed": (eps, min_samples) as given (paper: 0.7/3; official 336 px: 1.1/7; D2 version: 1.1/7).
    "grid": ε = eps·√(n/196), m = max(1, round(min_samples·n/196)). Our reading of the official pairs
    (0.7/3 at 196 points, 1.1/7 at 441 ≈ 0.7·√(441/196) = 1.05, 3·441/196 = 6.75), not the authors' rule.
    """
    if rule == "fixed":
        return float(eps), int(min_samples)
    if rule == "grid":
        ratio = num_points / REFERENCE_POINTS
        return float(eps) * math.sqrt(ratio), max(1, int(round(min_samples * ratio)))
    raise ValueError(f"MODEL.CLIPTRASE.DBSCAN_SCALE / MODEL.DEOP.CLUSTER_SCALE must be 'fixed' or 'grid', got '{rule}'.")


def cluster_patches(weights: torch.Tensor, eps: float, min_samples: int) -> torch.Tensor:
    """(T7) DBSCAN labels of the rows of W (hw×hw): a long tensor of hw labels in {−1, 0…K−1}.

    W is passed to scikit-learn in float32, as the official code does (its W comes from a float32 model).
    """
    if weights.dim() != 2:
        raise ValueError(f"cluster_patches expects one hw×hw matrix W, got shape {tuple(weights.shape)}.")
    from sklearn.cluster import DBSCAN

    data = weights.detach().to("cpu", torch.float32).numpy()
    labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(data)
    return torch.from_numpy(labels.astype(np.int64)).to(weights.device)


def cluster_maps(weights: torch.Tensor, labels: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """G_k = mean_{i: λ_i = k} W_i as maps: K×h×w (K = number of clusters, noise rows left out)."""
    num = int(labels.max()) + 1 if labels.numel() else 0
    if num <= 0:
        return weights.new_zeros(0, *grid)
    keep = labels >= 0
    onehot = F.one_hot(labels[keep], num).to(weights.dtype).T  # K×n_kept
    maps = onehot @ weights[keep] / onehot.sum(dim=1, keepdim=True)
    return maps.reshape(num, *grid)


def region_map(weights: torch.Tensor, labels: torch.Tensor, grid: Tuple[int, int], size: Tuple[int, int],
               ratio: int = 4, median_size: int = 7) -> torch.Tensor:
    """(T8) Region index of every pixel: H×W long in 0…K−1 (needs K ≥ 1).

    Cluster maps G_k (h×w) -> bilinear ×``ratio`` -> 2-D median filter of ``median_size`` per map
    (scipy's default 'reflect' border) -> bilinear to ``size`` -> argmax over k (first k on ties), as
    ``clip_self_correlation.py:181-201``. Every pixel gets a region, including those of noise patches.
    """
    from scipy.ndimage import median_filter

    maps = cluster_maps(weights, labels, grid)
    if maps.shape[0] == 0:
        raise ValueError("region_map needs at least one cluster; handle K = 0 by the pixel argmax (T8).")
    h, w = grid
    maps = F.interpolate(maps[None], size=(ratio * h, ratio * w), mode="bilinear", align_corners=False)[0]
    smooth = median_filter(maps.detach().cpu().numpy(), size=(1, median_size, median_size))
    maps = torch.from_numpy(np.ascontiguousarray(smooth)).to(weights.device)
    maps = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    return maps.argmax(dim=0)
