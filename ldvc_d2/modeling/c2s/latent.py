"""Latent embedding generation and the pixel loss of C2S (seed 003 §3.3, eq. 5; SEED_SYSTEMS §3.1 C9–C11).

* (C9) ``LatentDecoder``: a transformer decoder whose queries are an image's latent-region prototypes
  F_u and whose keys/values are that image's teacher tokens [C_g; C_l] → latent class embeddings A'_u
  (size unstated; ours: MODEL.C2S.DECODER_*). Images are padded to a batch, with key-padding masks.
* (C10) ``class_logits``: X = cat(α Fᵀ A_s, β cos(F, A'_u)); the latent axis differs per image, so the
  batch is padded to the most latent classes and ``class_valid`` says which columns are real.
* (C11) ``pixel_loss``: L_p = NEL + CE on those logits (NEL = ZegCLIP's focal + dice,
  :func:`~ldvc_d2.modeling.losses.focal_dice_loss`). Padded columns are −∞ for the cross-entropy and a
  logit of −10⁴ for focal/dice (sigmoid exactly 0, no NaN from −∞·0), so both equal the per-image
  losses over each image's own classes.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import focal_dice_loss

__all__ = ["LatentDecoder", "class_logits", "pixel_loss"]

PAD_LOGIT = -1e4  # a padded class for focal/dice: sigmoid 0, focal 0, never "present"


class LatentDecoder(nn.Module):
    """``num_layers`` torch TransformerDecoderLayers (post-norm, ReLU FFN) of width ``dim``."""

    def __init__(self, dim: int, *, num_layers: int = 1, num_heads: int = 8, ffn: int = 2048, dropout: float = 0.1):
        super().__init__()
        layer = nn.TransformerDecoderLayer(dim, num_heads, ffn, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers)

    def forward(self, queries: List[torch.Tensor], memory: List[torch.Tensor]) -> List[torch.Tensor]:
        """Per image K_b×D queries and M_b×D keys/values (M_b ≥ 1) -> per image K_b×D embeddings."""
        used = [i for i, q in enumerate(queries) if len(q)]
        out = [q.new_zeros(0, q.shape[-1]) for q in queries]
        if not used:
            return out
        q = nn.utils.rnn.pad_sequence([queries[i] for i in used], batch_first=True)
        m = nn.utils.rnn.pad_sequence([memory[i].to(q.dtype) for i in used], batch_first=True)
        q_pad = torch.stack([torch.arange(q.shape[1], device=q.device) >= len(queries[i]) for i in used])
        m_pad = torch.stack([torch.arange(m.shape[1], device=m.device) >= len(memory[i]) for i in used])
        y = self.decoder(q, m, tgt_key_padding_mask=q_pad, memory_key_padding_mask=m_pad)
        for row, i in enumerate(used):
            out[i] = y[row, : len(queries[i])]
        return out


def class_logits(features: torch.Tensor, text: torch.Tensor, latent: Optional[List[torch.Tensor]], alpha: float,
                 beta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """features: B×D×H×W; text: N_s×D; latent: per image K_b×D (or None). Returns (B×(N_s+K)×H×W logits,
    K = max K_b, padded columns PAD_LOGIT; B×(N_s+K) bool ``class_valid``)."""
    b = features.shape[0]
    seen = alpha * torch.einsum("bdhw,cd->bchw", features, text.to(features.dtype))
    valid = torch.ones(b, text.shape[0], dtype=torch.bool, device=features.device)
    k = max((len(a) for a in latent), default=0) if latent is not None else 0
    if k == 0:
        return seen, valid
    unit = F.normalize(features, dim=1)
    cols, flags = [], []
    for i, a in enumerate(latent):
        x = beta * torch.einsum("dhw,kd->khw", unit[i], F.normalize(a, dim=1))
        cols.append(torch.cat([x, x.new_full((k - len(a), *x.shape[1:]), PAD_LOGIT)]))
        flags.append(torch.arange(k, device=features.device) < len(a))
    return torch.cat([seen, torch.stack(cols)], dim=1), torch.cat([valid, torch.stack(flags)], dim=1)


def pixel_loss(logits: torch.Tensor, class_valid: torch.Tensor, targets: torch.Tensor, *, ignore_label: int,
               ce_weight: float, loss_kwargs: Dict[str, float]) -> Dict[str, torch.Tensor]:
    """logits: B×C×H×W at label resolution (padded columns PAD_LOGIT); targets: B×H×W in [0, C) or
    ignore. Returns {"loss_ce", "loss_focal", "loss_dice"} (eq. 5; weights applied)."""
    masked = logits.float().masked_fill(~class_valid[:, :, None, None], float("-inf"))
    if (targets != ignore_label).any():
        ce = F.cross_entropy(masked, targets, ignore_index=ignore_label)
    else:
        ce = logits.sum() * 0.0
    losses = focal_dice_loss(logits, targets, ignore_label=ignore_label, **loss_kwargs)
    return {"loss_ce": ce_weight * ce, **losses}
