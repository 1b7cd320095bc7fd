"""Label-map operations shared by the methods (one room per method: C2S and DeOP both import this).

Why one function: resizing a label map must never blend classes, so every method resizes labels by nearest
neighbour, and all of them must pick the same source pixel for the same target pixel (PyTorch's "nearest":
source index floor(i · in / out)), or a mask mined at one size and looked up at another would drift.
"""
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["resize_labels_nearest"]


def resize_labels_nearest(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """B×H×W integer (or bool) labels -> B×h×w, ``size`` = (h, w), by ``F.interpolate(mode="nearest")``.

    The dtype is kept. ``F.interpolate`` has no integer kernels, so the labels pass through float32: exact
    for label values of magnitude below 2**24 (class indices, ignore labels, masks).
    """
    resized = F.interpolate(labels[:, None].float(), size=tuple(int(s) for s in size), mode="nearest")
    return resized[:, 0].to(labels.dtype)
