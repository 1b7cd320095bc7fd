"""Shallow CoOp text prompts and a learned no-object embedding (DeOP, seed 004, §3.4 / SEED_SYSTEMS D5).

DeOP classifies with CLIP's text tower and "learnable prompts as CoOp": the sequence of class c is
``[SOS, p_1 … p_n, tokens(c), ".", EOS]`` where the n = 16 context vectors ``p`` are learned and shared by
all classes, initialised N(0, 0.02²) (CoOp's generic context), and enter **only the input layer**
(shallow prompting, unlike LDVC's deep prompts in :mod:`.text`). The class embedding is the [EOS]
output after ``ln_final`` and the text projection, L2-normalised. CLIP's text weights stay frozen.

A mask proposal may cover no class at all; DeOP appends one learned "no-object" embedding t_∅ to the
class embeddings (T ∈ ℝ^{(C+1)×d}), initialised N(0, 1/d) and L2-normalised when used (released code,
SEED_SYSTEMS D5; the paper does not describe it).
"""
import functools
from typing import List, Optional

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .text import adopt_text_tower, shifted_eos, text_blocks_and_head

__all__ = ["CoOpTextEncoder", "NoObjectEmbedding"]


@functools.lru_cache(maxsize=None)
def _simple_tokenizer(context_length: int) -> open_clip.tokenizer.SimpleTokenizer:
    """CLIP's BPE tokenizer, built once per context length (building its tables takes ~0.1 s)."""
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


class CoOpTextEncoder(nn.Module):
    """Class names → C×d L2-normalised embeddings with n_ctx shared, learned input-layer prompts.

    Args:
        clip_model: an open_clip ``CLIP`` whose text tower is used (its weights are not trained here;
            :func:`~ldvc_d2.modeling.clip.build_clip_model` returns it frozen).
        tokenizer: the model's open_clip tokenizer; ``None`` = open_clip's BPE tokenizer with the model's
            context length.
        n_ctx: number of learned context tokens (DeOP/CoOp: 16).
        init_std: standard deviation of their normal initialisation (CoOp: 0.02).
        suffix: text after the class name (DeOP: ".").
    """

    def __init__(self, clip_model: nn.Module, tokenizer=None, *, n_ctx: int = 16, init_std: float = 0.02,
                 suffix: str = "."):
        super().__init__()
        adopt_text_tower(self, clip_model, "CoOpTextEncoder")
        if n_ctx < 1:
            raise ValueError(f"CoOpTextEncoder: n_ctx (MODEL.DEOP.TEXT_CTX) must be >= 1, got {n_ctx}.")
        self.tokenizer = tokenizer if tokenizer is not None else _simple_tokenizer(self.context_length)
        self.n_ctx = n_ctx
        self.suffix = suffix
        self.ctx = nn.Parameter(torch.randn(n_ctx, self.width) * init_std)

    def forward(self, class_names: List[str]) -> torch.Tensor:
        """class_names: C strings. Returns the C×d class embeddings, L2-normalised."""
        if len(class_names) == 0:
            raise ValueError("CoOpTextEncoder: the list of class names is empty.")
        n, c = self.n_ctx, len(class_names)
        tokens = self.tokenizer([name + self.suffix for name in class_names]).to(self.positional_embedding.device)
        eos = shifted_eos(tokens, n, class_names, self.context_length,
                          f"{n} CoOp context tokens (MODEL.DEOP.TEXT_CTX)", "Shorten them or lower TEXT_CTX.")
        length = int(eos.max()) + 1  # causal attention: tokens after [EOS] never reach it
        emb = self.token_embedding(tokens[:, : length - n])
        x = torch.cat([emb[:, :1], self.ctx.to(emb.dtype).expand(c, -1, -1), emb[:, 1:]], dim=1)
        x = x + self.positional_embedding[:length].to(x.dtype)
        return text_blocks_and_head(self, x, eos)


class NoObjectEmbedding(nn.Module):
    """The learned no-object class embedding t_∅ (SEED_SYSTEMS D5): a d-vector, init N(0, 1/d).

    ``forward()`` returns it L2-normalised as a 1×d tensor; ``append(T)`` returns [T; t_∅], (C+1)×d.
    """

    def __init__(self, dim: int, init_std: Optional[float] = None):
        super().__init__()
        std = dim ** -0.5 if init_std is None else init_std
        self.embedding = nn.Parameter(torch.randn(1, dim) * std)

    def forward(self) -> torch.Tensor:
        return F.normalize(self.embedding, dim=-1)

    def append(self, class_embeddings: torch.Tensor) -> torch.Tensor:
        """class_embeddings: C×d → (C+1)×d with the no-object embedding as the last row."""
        return torch.cat([class_embeddings, self().to(class_embeddings.dtype)], dim=0)
