"""Text adapter, LDVC eq. (3): ``T_new = Proj([T ⊙ V_g ; T])``.

Each class embedding is modulated by the image's global feature V_g (the [CLS] embedding), so the
class anchors are image-specific, and concatenated with itself so that the image-independent
meaning is kept. Proj is a Linear 2d -> d; the result is not re-normalised (the paper does not).
"""
import torch
from torch import nn

__all__ = ["TextAdapter"]


class TextAdapter(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, text: torch.Tensor, global_feat: torch.Tensor) -> torch.Tensor:
        """text: C×d class embeddings T; global_feat: B×d (V_g). Returns B×C×d."""
        t = text.unsqueeze(0).expand(global_feat.shape[0], -1, -1)
        return self.proj(torch.cat([t * global_feat.unsqueeze(1), t], dim=-1))
