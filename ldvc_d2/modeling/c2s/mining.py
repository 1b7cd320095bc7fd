"""Latent-class mining of C2S (seed 003 §3.1, eq. 1; SEED_SYSTEMS §3.1 C2–C3).

Unannotated pixels (label ``ignore``, inside the image) hide unseen classes or unlabelled stuff. Their
teacher tokens are clustered per image:

* (C2, eq. 1) seeds: every token whose (nearest-downsampled) label is a seen class is zeroed; for each
  window size o ∈ 𝒪 the o×o window means at stride round(o/2) are seeds. Windows without any
  unannotated token (all-zero seeds) are dropped (ours).
* (ours, ``center``) the mean of the image's valid tokens is subtracted first: CLIP's patch tokens share one
  direction (cosine ~0.8 between any two), which leaves no threshold between "same" and "different".
* (C3) cosine K-Means over the unannotated tokens, initialised with the seeds (vectorised torch, a fixed
  number of iterations, no randomness); clusters are then merged while similar (the supplement's rule is
  unknown, ours): ``linkage="average"`` merges greedily the pair with the highest mean pairwise token
  cosine while it exceeds θ (UPGMA); ``"single"`` merges connected components of {centroid cosine > θ}.
  Clusters with fewer than ``min_tokens`` tokens are dropped and at most ``max_classes`` are kept, largest
  first. The numbers behind the defaults: docs/c2s.md "Latent mining", tools/c2s_mining_sweep.py.
* Pseudo mask Y_p: seen labels ∪ latent regions, latent class k of an image labelled ``num_seen + k``.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..label_ops import resize_labels_nearest

__all__ = ["average_linkage", "cosine_kmeans", "merge_clusters", "mine_latent_classes", "pseudo_mask", "window_seeds"]


def window_seeds(dense: torch.Tensor, unannotated: torch.Tensor, window_sizes: Sequence[int]) -> torch.Tensor:
    """dense: d×h×w tokens; unannotated: h×w bool. Returns S×d seeds (eq. 1), windows with no
    unannotated token left out; windows larger than the grid are skipped."""
    zeroed = (dense * unannotated).unsqueeze(0)
    mask = unannotated[None, None].to(dense.dtype)
    seeds = []
    for o in window_sizes:
        if o > min(dense.shape[-2:]):
            continue
        stride = max(1, int(o / 2 + 0.5))  # round(o/2), halves up
        s = F.avg_pool2d(zeroed, o, stride)[0].flatten(1).T
        keep = F.avg_pool2d(mask, o, stride).flatten() > 0
        seeds.append(s[keep])
    return torch.cat(seeds) if seeds else dense.new_zeros(0, dense.shape[0])


def cosine_kmeans(points: torch.Tensor, seeds: torch.Tensor, iters: int):
    """Spherical K-Means: N×d points, K×d initial centroids -> (N assignments, K×d unit centroids,
    K counts). A cluster that loses all its points keeps its last centroid and count 0."""
    x = F.normalize(points, dim=1)
    centroids = F.normalize(seeds, dim=1)
    k = centroids.shape[0]
    for _ in range(max(iters, 1)):
        assign = (x @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        centroids = torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), centroids)
    assign = (x @ centroids.T).argmax(dim=1)
    return assign, centroids, torch.bincount(assign, minlength=k)


def merge_clusters(centroids: torch.Tensor, counts: torch.Tensor, threshold: float) -> torch.Tensor:
    """K group ids (the smallest cluster index of each connected component of {cos > threshold} over
    non-empty clusters); empty clusters keep their own index."""
    alive = counts > 0
    adjacency = (centroids @ centroids.T > threshold) & alive[:, None] & alive[None, :]
    adjacency |= torch.eye(len(counts), dtype=torch.bool, device=counts.device)
    labels = torch.arange(len(counts), device=counts.device)
    big = len(counts)
    while True:  # min-label propagation: converges in at most the graph's diameter
        new = torch.where(adjacency, labels[None, :], big).amin(dim=1)
        if torch.equal(new, labels):
            return labels
        labels = new


def average_linkage(sums: torch.Tensor, counts: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy average-linkage (UPGMA) merging. sums: K×d sums of each cluster's *unit* tokens; counts: K.
    The similarity of clusters a, b is the mean cosine over their token pairs, S_a·S_b / (n_a n_b); the most
    similar pair is merged while that exceeds ``threshold``. Returns K group ids (the surviving index of each
    merged group; empty clusters keep their own index)."""
    k = len(counts)
    labels = torch.arange(k, device=counts.device)
    alive = (counts > 0).nonzero().flatten()
    if len(alive) < 2:
        return labels
    s, n = sums[alive].double(), counts[alive].double()
    sim = (s @ s.T) / (n[:, None] * n[None, :])
    sim.fill_diagonal_(float("-inf"))
    best, partner = sim.max(dim=1)  # each row's most similar cluster, updated row-wise after a merge
    owner = torch.arange(len(alive), device=counts.device)  # compact index -> surviving compact index
    merged = torch.zeros(len(alive), dtype=torch.bool, device=counts.device)
    while True:
        a = int(best.argmax())
        b = int(partner[a])
        if not best[a] > threshold:
            break
        s[a] += s[b]
        n[a] += n[b]
        owner[owner == b] = a
        merged[b] = True
        row = ((s @ s[a]) / (n * n[a])).masked_fill(merged, float("-inf"))
        sim[a], sim[:, a] = row, row
        sim[b], sim[:, b] = float("-inf"), float("-inf")
        sim[a, a] = float("-inf")
        stale = (partner == a) | (partner == b)
        stale[a] = True
        best[b] = float("-inf")
        if stale.any():
            best[stale], partner[stale] = sim[stale].max(dim=1)
        better = sim[:, a] > best
        best[better], partner[better] = sim[better, a], a
    labels[alive] = alive[owner]
    return labels


def mine_latent_classes(dense: torch.Tensor, unannotated: torch.Tensor, *, window_sizes: Sequence[int], iters: int,
                        threshold: float, min_tokens: int, max_classes: int, linkage: str = "single",
                        center: bool = False, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dense: d×h×w teacher tokens; unannotated: h×w bool; valid: h×w bool (not padding; default all), the
    tokens whose mean ``center`` subtracts. Returns h×w long: latent class 0..K-1 (largest first) or -1
    (seen, padding, or in a dropped cluster)."""
    out = torch.full(unannotated.shape, -1, dtype=torch.long, device=dense.device)
    if center:
        inside = valid if valid is not None else torch.ones_like(unannotated)
        if inside.any():
            dense = dense - dense[:, inside].mean(dim=1)[:, None, None]
    seeds = window_seeds(dense, unannotated, window_sizes)
    if not len(seeds) or not unannotated.any():
        return out
    points = dense[:, unannotated].T
    assign, centroids, counts = cosine_kmeans(points, seeds, iters)
    if linkage == "average":
        sums = torch.zeros_like(centroids).index_add_(0, assign, F.normalize(points, dim=1))
        groups = average_linkage(sums, counts, threshold)[assign]
    elif linkage == "single":
        groups = merge_clusters(centroids, counts, threshold)[assign]
    else:
        raise ValueError(f"MODEL.C2S.MERGE_LINKAGE must be 'average' or 'single', got '{linkage}'")
    ids, sizes = torch.unique(groups, return_counts=True)
    order = sizes.argsort(descending=True, stable=True)
    kept = ids[order][sizes[order] >= min_tokens][:max_classes]
    lut = torch.full((len(counts),), -1, dtype=torch.long, device=dense.device)
    lut[kept] = torch.arange(len(kept), device=dense.device)
    out[unannotated] = lut[groups]
    return out


def pseudo_mask(targets: torch.Tensor, latent: torch.Tensor, valid: torch.Tensor, num_seen: int,
                ignore_label: int) -> torch.Tensor:
    """Y_p (B×H×W): seen targets kept; unannotated valid pixels whose token (``latent``: B×h×w, nearest
    upsampled) has latent class k become ``num_seen + k``; everything else stays ``ignore_label``."""
    up = resize_labels_nearest(latent, targets.shape[-2:])
    fill = (targets == ignore_label) & valid & (up >= 0)
    return torch.where(fill, num_seen + up, targets)
