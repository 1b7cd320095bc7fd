"""ZegCLIP's decoder (Zhou et al., CVPR 2023): the "Baseline" of LDVC's Tables 1, 4 and 7.

LDVC's decoder reverses this one: here the *class queries* attend to the image features. The facts
follow ZegCLIP's public code (its ``ATMSingleHeadSeg`` with ``use_proj=False``, one stage), written
anew for this project:

* Relationship descriptor: per image and class, ``q = Linear_{2d->d}([V_g ⊙ T ; T])`` — the same
  form as LDVC's text adapter (eq. 3), so :class:`TextAdapter` is reused.
* ``NUM_LAYERS`` (3) post-norm decoder layers; the queries cross-attend to the dense image features
  V_l (no projection of V_l, no positional encoding, no self-attention between queries)::

      q = Norm2(q + Drop(CA(q, V_l, V_l)))
      q = Norm3(q + Drop(Linear2(Drop(ReLU(Linear1(q))))))

  CA has its own q/k/v Linears (with bias), an output Linear, scale (d/heads)^-1/2 and dropout on the
  softmax weights.
* Masks: the cross-attention *logits* (scaled q·k before the softmax) of the last layer, averaged over
  heads, are the class logits B×C×h×w (sigmoid at inference, as LDVC). ZegCLIP computes every layer's
  map but its loss uses only the last one, as here — so the last layer's values, output projection,
  norms and feed-forward never get a gradient either (they are trainable parameters all the same).
* Init: Linear weights truncated normal (std 0.02), biases 0; LayerNorms 1 / 0.
* ZegCLIP's layers subclass ``torch.nn.TransformerDecoderLayer`` and so also own a self-attention and
  a first LayerNorm that ``forward`` never calls. MODEL.ZEGCLIP.UNUSED_SELF_ATTENTION keeps such
  (never-called) modules so that the trainable-parameter count and state-dict layout match the
  official 13.8M / 14.6M; they receive no gradient. (train_net.py's Trainer runs DDP with
  ``find_unused_parameters=True`` for this head.)
"""
from typing import Dict, List, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..text_adapter import TextAdapter

__all__ = ["ZegCLIPCrossAttention", "ZegCLIPDecoderLayer", "ZegCLIPHead"]


class ZegCLIPCrossAttention(nn.Module):
    """Multi-head attention of queries B×C×d over memory B×L×d that also returns its logits."""

    def __init__(self, dim: int, num_heads: int, attn_dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MODEL.ZEGCLIP.NUM_HEADS={num_heads} must divide the embedding width {dim}.")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (output B×C×d, head-averaged pre-softmax logits B×C×L)."""
        q, k, v = self._heads(self.q(query)), self._heads(self.k(memory)), self._heads(self.v(memory))
        logits = (q @ k.transpose(-2, -1)) * self.scale
        out = (self.attn_drop(logits.softmax(dim=-1)) @ v).transpose(1, 2).flatten(2)
        return self.proj(out), logits.mean(dim=1)


class ZegCLIPDecoderLayer(nn.Module):
    """Cross-attention + feed-forward, post-norm (see the module docstring)."""

    def __init__(self, dim: int, *, num_heads: int, mlp_dim: int, dropout: float, attn_dropout: float,
                 unused_self_attention: bool):
        super().__init__()
        if unused_self_attention:  # never called; kept for ZegCLIP's parameter count and layout
            self.self_attn = nn.MultiheadAttention(dim, num_heads)
            self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = ZegCLIPCrossAttention(dim, num_heads, attn_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)  # inside the feed-forward
        self.dropout2 = nn.Dropout(dropout)  # on the cross-attention output
        self.dropout3 = nn.Dropout(dropout)  # on the feed-forward output

    def forward(self, q: torch.Tensor, memory: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out, logits = self.cross_attn(q, memory)
        q = self.norm2(q + self.dropout2(out))
        q = self.norm3(q + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(q))))))
        return q, logits


@SEM_SEG_HEADS_REGISTRY.register()
class ZegCLIPHead(nn.Module):
    """Relationship descriptor + ZegCLIP decoder; ``forward(features, text)`` -> logits B×C×h×w.

    Same interface as :class:`LCTDHead`: ``features`` is the backbone's dict (``dense`` B×d×h×w,
    ``global`` B×d; ``intermediate`` is not used), ``text`` the C×d class embeddings.
    ``return_attention=True`` also returns every layer's head-averaged cross-attention logits as a
    list of B×C×h×w maps (the last one is the prediction).
    """

    @configurable
    def __init__(self, *, dim: int, num_layers: int, num_heads: int = 8, mlp_dim: int = 2048,
                 dropout: float = 0.1, attn_dropout: float = 0.1, unused_self_attention: bool = True):
        super().__init__()
        self.token_divisibility = 1  # any token grid
        self.relationship = TextAdapter(dim)
        self.layers = nn.ModuleList(
            ZegCLIPDecoderLayer(dim, num_heads=num_heads, mlp_dim=mlp_dim, dropout=dropout,
                                attn_dropout=attn_dropout, unused_self_attention=unused_self_attention)
            for _ in range(num_layers)
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        z = cfg.MODEL.ZEGCLIP
        return {
            "dim": input_shape["dense"].channels,
            "num_layers": z.NUM_LAYERS,
            "num_heads": z.NUM_HEADS,
            "mlp_dim": z.MLP_DIM,
            "dropout": z.DROPOUT,
            "attn_dropout": z.ATTN_DROPOUT,
            "unused_self_attention": z.UNUSED_SELF_ATTENTION,
        }

    def forward(
        self, features: Dict[str, object], text: torch.Tensor, return_attention: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        dense = features["dense"]
        b, _, h, w = dense.shape
        memory = dense.flatten(2).transpose(1, 2)
        q = self.relationship(text, features["global"])
        maps = []
        for layer in self.layers:
            q, logits = layer(q, memory)
            maps.append(logits.view(b, -1, h, w))
        return (maps[-1], maps) if return_attention else maps[-1]
