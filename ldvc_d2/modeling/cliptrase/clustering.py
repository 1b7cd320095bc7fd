"""CLIPtrase's patch clustering (T7, SEED_SYSTEMS.md §2.1-2.2): DBSCAN on the rows of W.

scikit-learn's DBSCAN is used as the official code does (``clip_self_correlation.py:168-169``):
Euclidean distance between rows of W, radius ``eps``, ``min_samples`` counting the point itself;
noise gets label −1, clusters are numbered 0…K−1.
"""
import math
from typing import Tuple

import numpy as np
import torch
from sklearn.cluster import DBSCAN

__all__ = ["REFERENCE_POINTS", "cluster_patches", "dbscan_parameters"]

# The official ε/m were tuned at 224 px on ViT-B/16: a 14×14 grid.
REFERENCE_POINTS = 196


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
    raise ValueError(f"MODEL.CLIPTRASE.DBSCAN_SCALE must be 'fixed' or 'grid', got '{rule}'.")


def cluster_patches(weights: torch.Tensor, eps: float, min_samples: int) -> torch.Tensor:
    """(T7) DBSCAN labels of the rows of W (hw×hw): a long tensor of hw labels in {−1, 0…K−1}.

    W is passed to scikit-learn in float32, as the official code does (its W comes from a float32 model).
    """
    if weights.dim() != 2:
        raise ValueError(f"cluster_patches expects one hw×hw matrix W, got shape {tuple(weights.shape)}.")
    data = weights.detach().to("cpu", torch.float32).numpy()
    labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(data)
    return torch.from_numpy(labels.astype(np.int64)).to(weights.device)
