"""Replacements of the last block's attention used by the training-free CLIP segmentors.

Each is a pure function of the q, k, v of one open_clip block (B×H×N×d_h, N = 1 + h·w, [CLS] first, as
:func:`~ldvc_d2.modeling.clip.surgery.block_qkv` gives them, biases included, no 1/√d_h scaling) returning
per-head outputs B×H×N×d_h, for ``BlockHook.attn_fn``. s = d_h^-1/2 throughout.

* :func:`identity_attention` — MaskCLIP (Zhou et al., ECCV 2022): the query and key embeddings are dropped and
  the value embedding goes straight to the output projection: O = v (A = I).
* :class:`SelfCorrelationAttention` — SCLIP's correlative self-attention (Wang et al., ECCV 2024:
  A = softmax(s q qᵀ) + softmax(s k kᵀ), branches ["q", "k"]) and CLIPtrase's q+k+v form (seed 001, T2).
* :func:`qq_attention` — ClearCLIP (Lan et al., ECCV 2024, query-query attention): A = softmax(s q qᵀ).
* :class:`NeighbourhoodAttention` — NACLIP (Hajimiri et al., WACV 2025): A = softmax(s k kᵀ + Ω),
  Ω a Gaussian of the patch-grid distance (:func:`gaussian_prior`).
"""
from functools import lru_cache
from typing import Sequence, Tuple

import torch

from .clustering import BRANCHES, check_branches, pick_branches

__all__ = ["NeighbourhoodAttention", "SelfCorrelationAttention", "gaussian_prior", "identity_attention", "qq_attention",
           "softmax_attention"]


def softmax_attention(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(s a bᵀ) v, per head (B×H×N×d_h each)."""
    s = a.shape[-1] ** -0.5
    return torch.softmax(s * a @ b.transpose(-1, -2), dim=-1) @ v


def identity_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """MaskCLIP: no query-key attention, every token keeps its own value embedding (A = I)."""
    return v


def qq_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ClearCLIP's query-query attention: softmax(s q qᵀ) v (released code ``attn_type 'q-q'``)."""
    return softmax_attention(q, q, v)


class SelfCorrelationAttention:
    """A_h = Σ_a softmax(s a_h a_hᵀ) over ``branches``, output A_h v_h.

    Rows of A sum to the number of branches: neither SCLIP's released code nor CLIPtrase's renormalises the
    sum (SCLIP ``clip/model.py`` ``custom_attn``: ``attn_weights = q_attn + k_attn``). ["q", "k"] is SCLIP's
    correlative self-attention, ["q", "k", "v"] CLIPtrase's. ``scale`` overrides s.
    """

    def __init__(self, branches: Sequence[str] = BRANCHES, scale: float = None):
        self.branches = check_branches(branches)
        self.scale = scale

    def weights(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """A: B×H×N×N, each row summing to ``len(branches)``."""
        s = q.shape[-1] ** -0.5 if self.scale is None else self.scale
        return sum(torch.softmax(s * a @ a.transpose(-1, -2), dim=-1) for a in pick_branches(q, k, v, self.branches))

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.weights(q, k, v) @ v


@lru_cache(maxsize=16)
def _prior(h: int, w: int, sigma: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    p = torch.stack([ys.flatten(), xs.flatten()], dim=1)
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    omega = torch.zeros(1 + h * w, 1 + h * w, dtype=torch.float64)
    omega[1:, 1:] = torch.exp(-d2 / (2 * sigma ** 2))
    return omega.float()


def gaussian_prior(h: int, w: int, sigma: float) -> torch.Tensor:
    """NACLIP's neighbourhood prior Ω, (1+hw)×(1+hw): Ω_ij = exp(−‖p_i − p_j‖² / (2σ²)) for patches i, j
    at grid positions p (row, column); 0 on the [CLS] row and column. The released code convolves a
    (2h−1)×(2w−1) Gaussian window ("same" padding), i.e. the Gaussian is never truncated inside the grid; cached."""
    if sigma <= 0:
        raise ValueError(f"NACLIP's Gaussian standard deviation (MODEL.NACLIP.GAUSSIAN_STD) must be > 0, got {sigma}.")
    return _prior(int(h), int(w), float(sigma))


class NeighbourhoodAttention:
    """NACLIP's attention on an h×w patch grid. ``mode``:

    * "naclip": softmax(s k kᵀ + Ω) v (key-key similarity plus the neighbourhood prior);
    * "kk": softmax(s k kᵀ) v; "nonly": softmax(c·Ω) v with c = s · mean_{h,i,j} ‖q_hi‖‖k_hj‖ per image, the prior
      alone at the scale of the attention logits (released code's ablations ``attn_strategy``; it runs one window
      at a time, so its mean over heads is a mean per image here).
    """

    MODES = ("naclip", "kk", "nonly")

    def __init__(self, grid: Tuple[int, int], sigma: float = 5.0, mode: str = "naclip"):
        if mode not in self.MODES:
            raise ValueError(f"MODEL.NACLIP.ATTENTION must be one of {list(self.MODES)}, got '{mode}'.")
        self.grid, self.sigma, self.mode = (int(grid[0]), int(grid[1])), float(sigma), mode
        if mode != "kk":
            gaussian_prior(*self.grid, self.sigma)  # checks sigma

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = 1 + self.grid[0] * self.grid[1]
        if k.shape[-2] != n:
            raise ValueError(f"NeighbourhoodAttention for a {self.grid} grid needs {n} tokens, got {k.shape[-2]}.")
        s = k.shape[-1] ** -0.5
        omega = gaussian_prior(*self.grid, self.sigma).to(k) if self.mode != "kk" else None
        if self.mode == "nonly":
            scale = s * (q.norm(dim=-1)[..., :, None] * k.norm(dim=-1)[..., None, :]).mean(dim=(1, 2, 3))
            return torch.softmax(scale[:, None, None, None] * omega, dim=-1) @ v
        logits = s * k @ k.transpose(-1, -2)
        if self.mode == "naclip":
            logits = logits + omega
        return torch.softmax(logits, dim=-1) @ v
