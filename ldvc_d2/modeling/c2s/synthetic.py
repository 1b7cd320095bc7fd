"""CLIP-like synthetic teacher tokens with known classes, and a score of mined latent classes against them.

Real CLIP patch tokens are anisotropic: any two tokens of an image have cosine ~0.8, same-class pairs only a
little more. :func:`correlated_tokens` draws such tokens (used by tools/c2s_mining_sweep.py and the mining
tests): a Voronoi label map of ``num_latent`` unannotated classes and ``num_seen`` annotated ones on a
``grid``×``grid`` token map, token = √a·m + √b·u_class + √(1−a−b)·n, with m one shared direction, u_class
one direction per class and n spatially smoothed unit noise. (a, b) = (0.8, 0.1) gives cosine ~0.90
within / ~0.80 between classes, (0.8, 0.05) ~0.86 / 0.80, (0.75, 0.05) ~0.81 / 0.75.
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

__all__ = ["correlated_tokens", "score_mining"]


def correlated_tokens(seed: int, *, num_latent: int = 4, num_seen: int = 2, dim: int = 512, grid: int = 32,
                      shared: float = 0.8, own: float = 0.05, smooth: bool = True
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dim×grid×grid tokens, grid×grid class labels 0..num_latent+num_seen−1, grid×grid bool
    "unannotated" = label < num_latent)."""
    if not 0 < shared + own < 1:
        raise ValueError(f"shared ({shared}) + own ({own}) must lie in (0, 1)")
    gen = torch.Generator().manual_seed(seed)
    n = num_latent + num_seen
    centres = torch.rand(n, 2, generator=gen) * grid
    yy, xx = torch.meshgrid(torch.arange(grid).float(), torch.arange(grid).float(), indexing="ij")
    labels = ((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2).argmin(0)
    common = F.normalize(torch.randn(dim, generator=gen), dim=0)
    directions = F.normalize(torch.randn(n, dim, generator=gen), dim=1)
    noise = torch.randn(dim, grid, grid, generator=gen)
    if smooth:  # neighbouring tokens share part of their noise, as overlapping receptive fields do
        noise = F.avg_pool2d(noise[None], 3, 1, 1, count_include_pad=False)[0]
    noise = noise / noise.norm(dim=0, keepdim=True)
    tokens = (shared ** 0.5 * common[:, None, None] + own ** 0.5 * directions[labels].permute(2, 0, 1)
              + (1 - shared - own) ** 0.5 * noise)
    return tokens, labels, labels < num_latent


def score_mining(latent: torch.Tensor, labels: torch.Tensor, unannotated: torch.Tensor) -> Dict[str, float]:
    """latent: h×w mined ids (−1 = none); labels: h×w true classes (withheld from mining). Over the unannotated
    tokens: clusters kept, their mean size, purity (share of kept tokens in their cluster's majority class),
    coverage (share of unannotated tokens in a kept cluster) and recall (share of the true classes present of
    which one cluster holds at least half the tokens)."""
    pred, truth = latent[unannotated], labels[unannotated]
    kept = pred >= 0
    ids = torch.unique(pred[kept])
    majority = sum(int(torch.bincount(truth[pred == j]).max()) for j in ids)
    classes = torch.unique(truth)
    found = 0
    for c in classes:
        inside = truth == c
        best = max([int(((pred == j) & inside).sum()) for j in ids] + [0])
        found += best >= 0.5 * int(inside.sum())
    return {"clusters": float(len(ids)), "size": float(kept.sum()) / max(len(ids), 1),
            "purity": majority / max(int(kept.sum()), 1), "coverage": float(kept.float().mean()) if len(pred) else 0.0,
            "recall": found / max(len(classes), 1)}
