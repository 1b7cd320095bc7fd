"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), a post-processing step
any segmentor can apply to its score maps (MODEL.SEGMENTOR.INFERENCE.PAMR_STEPS, PAMR_DILATIONS).

For every pixel i and its 8·|D| neighbours j at offsets d·{−1, 0, 1}² \\ {(0, 0)}, d ∈ D (image borders
replicated), the affinity of the image I (K channels) is

    a_ij = mean_k ( −|I_ik − I_jk| / (1e-8 + 0.1 σ_ik) ),   α_i· = softmax_j(a_i·)

with σ_ik the unbiased standard deviation of channel k over the 9·|D| samples (the centre and its 8
neighbours, for every dilation). The mask is propagated ``num_iter`` times: M_i ← Σ_j α_ij M_j. Where the
paper is silent these follow the released code (1-stage-wseg ``models/mods/pamr.py``, used unchanged by SCLIP
and NACLIP): replicate padding, the 0.1 and 1e-8 constants, the unbiased std, the mask resized to the
image's size (bilinear, align_corners=True). α does not depend on the mask, so it is computed once and
applied to ``chunk`` classes at a time (171 classes × 640×480 × 16 neighbours would be 3.4 GB at once).
"""
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["PAMR", "pamr_affinity", "shifted"]


def shifted(x: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """B×C×H×W -> B×C×(8·|D|)×H×W: x at the 8 neighbours of every pixel for each dilation (replicate borders),
    in the order (dilation, dy ∈ {−1,0,1}, dx ∈ {−1,0,1}) without the centre."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        p = F.pad(x, (d, d, d, d), mode="replicate")
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    out.append(p[..., d + dy * d:d + dy * d + h, d + dx * d:d + dx * d + w])
    return torch.stack(out, dim=2)


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """α: B×1×(8·|D|)×H×W, softmax over the neighbours, for a B×K×H×W image."""
    nbrs = shifted(image, dilations)  # B×K×8D×H×W
    centre = image[:, :, None]
    samples = torch.cat([torch.cat([centre, nbrs[:, :, 8 * i:8 * (i + 1)]], dim=2) for i in range(len(dilations))], 2)
    sigma = samples.std(dim=2, keepdim=True, unbiased=True)
    a = -(nbrs - centre).abs() / (1e-8 + 0.1 * sigma)
    return torch.softmax(a.mean(dim=1, keepdim=True), dim=2)


class PAMR(torch.nn.Module):
    """``PAMR(num_iter, dilations)(image, mask)``: image B×K×H×W, mask B×C×h×w -> refined B×C×H×W."""

    def __init__(self, num_iter: int = 10, dilations: Sequence[int] = (8, 16), chunk: int = 16):
        super().__init__()
        if num_iter < 0 or not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f"PAMR needs num_iter >= 0 and dilations >= 1 (MODEL.SEGMENTOR.INFERENCE.PAMR_STEPS / "
                             f"PAMR_DILATIONS), got {num_iter} and {list(dilations)}.")
        self.num_iter, self.dilations, self.chunk = int(num_iter), [int(d) for d in dilations], max(int(chunk), 1)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = F.interpolate(mask, size=image.shape[-2:], mode="bilinear", align_corners=True)
        alpha = pamr_affinity(image.float(), self.dilations)
        out = []
        for m in mask.split(self.chunk, dim=1):
            for _ in range(self.num_iter):
                m = (shifted(m, self.dilations) * alpha).sum(dim=2)
            out.append(m)
        return torch.cat(out, dim=1)
