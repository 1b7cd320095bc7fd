"""CLIP-to-Seg distillation losses (seed 003 §3.2, eq. 2–4; SEED_SYSTEMS §3.1 C5–C8).

* (C5) global prototype: w = softmax_L(C_gᵀ F / √D), F_g = w Fᵀ (padding locations left out).
* (C6) global distillation: InfoNCE of F̂_g against the [CLS] bank. Each step the current tokens of all
  processes are gathered and enqueued *before* the loss (the paper: "before updating the model
  parameters, we enqueue the current CLS token"), newest first; the candidates are the bank after the
  enqueue (the batch's own tokens among them, the rest the latest previous ones), the positive is the
  image's own token. Eq. (2) is printed without log and minus sign; read as InfoNCE (van den Oord 2018).
* (C7) local prototypes: f_r = masked mean of F over region r (eq. 3).
* (C8) local distillation: InfoNCE of f̂_r against the region tokens ĉ_r' of all P regions of the
  process's batch, the positive being the same region's token (eq. 4; "same class" positives across
  images would be the other reading — not taken, ours).
Similarities are cosine (both sides L2-normalised) divided by τ.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import nn

__all__ = ["CLSBank", "gather_tokens", "global_prototype", "info_nce", "region_prototypes"]


def global_prototype(features: torch.Tensor, cls: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """features: B×D×H×W; cls: B×D; valid: B×H×W bool (None: all). Returns F_g: B×D (C5)."""
    b, d = features.shape[:2]
    flat = features.flatten(2)
    scores = torch.einsum("bd,bdl->bl", cls.to(flat.dtype), flat) / d**0.5
    if valid is not None:
        scores = scores.masked_fill(~valid.flatten(1), float("-inf"))
    return torch.einsum("bl,bdl->bd", scores.softmax(dim=1), flat)


def region_prototypes(features: torch.Tensor, labels: torch.Tensor, image_index: torch.Tensor,
                      region_label: torch.Tensor) -> torch.Tensor:
    """features: B×D×H×W; labels: B×H×W long at feature resolution; regions r given by (image_index[r],
    region_label[r]). Returns R×D masked means (eq. 3); every region must have a pixel."""
    b, d, h, w = features.shape
    top = int(max(labels.max().item(), region_label.max().item() if len(region_label) else 0)) + 1
    key = (torch.arange(b, device=labels.device)[:, None, None] * top + labels.clamp(min=0)).flatten()
    inside = (labels >= 0).flatten()
    flat = features.permute(0, 2, 3, 1).reshape(-1, d)
    sums = flat.new_zeros(b * top, d).index_add_(0, key[inside], flat[inside])
    counts = torch.bincount(key[inside], minlength=b * top).to(flat.dtype)
    wanted = image_index * top + region_label
    return sums[wanted] / counts[wanted, None]


def info_nce(queries: torch.Tensor, keys: torch.Tensor, positives: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over queries of −log softmax_j(⟨q̂, k̂_j⟩/τ)[positive] (Q×D queries, K×D keys, Q indices)."""
    logits = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T / tau
    return F.cross_entropy(logits, positives)


def gather_tokens(tokens: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """B×D tokens of this process -> (all processes' tokens, rank-major: (world·B)×D; the offset of this
    process's first token). Every process must hold the same B (the training stream's fixed batch)."""
    world = comm.get_world_size()
    if world == 1:
        return tokens, 0
    tokens = tokens.detach().contiguous()
    sizes = comm.all_gather(tokens.shape[0])
    if len(set(sizes)) != 1:
        raise RuntimeError(f"C2S's [CLS] bank needs the same number of images on every process, got {sizes}.")
    parts = [torch.empty_like(tokens) for _ in range(world)]
    torch.distributed.all_gather(parts, tokens)
    return torch.cat(parts), comm.get_rank() * tokens.shape[0]


class CLSBank(nn.Module):
    """FIFO bank of the latest ``size`` teacher [CLS] tokens (C6), identical on every process.

    Buffers (saved with the model, so ``--resume`` continues with the same bank): ``tokens`` size×D,
    newest first, and ``count``, how many rows are filled."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = size
        self.register_buffer("tokens", torch.zeros(size, dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, current: torch.Tensor) -> torch.Tensor:
        """Enqueue G×D gathered tokens (newest first). Returns the InfoNCE candidates: the G current
        tokens, then the previous bank's newest rows, max(size, G) rows in all."""
        old = self.tokens[: int(self.count)]
        candidates = torch.cat([current.to(self.tokens.dtype), old])[: max(self.size, len(current))]
        kept = candidates[: self.size]
        self.tokens[: len(kept)] = kept
        self.count.fill_(len(kept))
        return candidates
