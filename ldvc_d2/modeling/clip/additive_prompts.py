"""DeOP's additive visual prompts (seed 004, "VPT adding prompts", supp. Table 7; SEED_SYSTEMS D2).

Unlike LDVC's deep prompts (extra tokens prepended to every block, :mod:`.vision`), DeOP adds a learned
tensor P_b ∈ ℝ^{(1+g²)×width} to the token sequence: P_0 together with the positional embedding before
``ln_pre`` and P_b (b ≥ 1) to the residual stream entering block b. Each P_b is defined on a g×g grid
(released code: 384 px / 16 = 24) and resized bicubically to the input's patch grid, its [CLS] row kept.
Initialisation as the released code: width^-1/2 · N(0, 1) (not zero).
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdditiveVisualPrompts"]


class AdditiveVisualPrompts(nn.Module):
    """Learned additive token tensors for the blocks in ``layers`` (0 = before ``ln_pre``).

    Args:
        layers: indices b; 0 adds before ``ln_pre``, b ≥ 1 before block b (released code: 0…5).
        grid: side g of the learned grid.
        width: the tower's token width.
    """

    def __init__(self, layers: Sequence[int], grid: int, width: int):
        super().__init__()
        if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
            raise ValueError(f"MODEL.DEOP.VISUAL_PROMPT_LAYERS must be distinct indices >= 0, got {list(layers)}.")
        if grid < 1:
            raise ValueError(f"MODEL.DEOP.VISUAL_PROMPT_GRID must be >= 1, got {grid}.")
        self.layers = [int(b) for b in layers]
        self.grid = grid
        self.prompts = nn.Parameter(torch.randn(len(self.layers), 1 + grid * grid, width) * width ** -0.5)

    def forward(self, layer: int, h: int, w: int) -> torch.Tensor:
        """P_layer resized to an h×w patch grid: (1 + h·w)×width."""
        p = self.prompts[self.layers.index(layer)]
        if (h, w) == (self.grid, self.grid):
            return p
        g = p[1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        g = F.interpolate(g, size=(int(h), int(w)), mode="bicubic", align_corners=False)
        return torch.cat([p[:1], g.permute(0, 2, 3, 1).reshape(int(h) * int(w), -1)], dim=0)
