"""Local Consensus Transformer Decoder (LCTD), LDVC eqs. (3)-(7) and (13).

The decoder runs the reverse of ZegCLIP/SegViT's: *image features are the queries* and the class
embeddings the keys/values, so visual features are pulled towards the (discrete, abstract) class
anchors. Per block (all norms are LayerNorm, pre-norm as the equations write them):

    V = V_in + Conv1x1(V_j)                    (4)  V_in of block 1 is the dense CLIP feature V_l
    V = V + LCSA(Norm(V))                      (5)
    V = V + CA(Norm(V), Norm(T_new))           (6)  multi-head cross-attention, q = V, k = v = T_new
    V_out = V + MLP(Norm(V))                   (7)

and the logits are ``S = T_new V_o^T`` (13), one map per class, without temperature or
normalisation (as written in the paper). Choices where the paper is silent: the Conv1x1 is
zero-initialised, so training starts from CLIP's own dense features (ours); the MLP is
Linear-GELU-Linear with MODEL.LDVC.LCTD.MLP_RATIO hidden width. Following ZegCLIP's decoder (the paper
follows ZegCLIP's training): dropout 0.1 on the outputs of LCSA, CA and the MLP and inside the MLP
(MODEL.LDVC.LCTD.DROPOUT, torch's TransformerDecoderLayer default), dropout 0.1 on the attention weights
(ATTN_DROPOUT, ZegCLIP's ``attn_drop``), and Linear weights truncated normal with std 0.02, biases 0
(WEIGHT_INIT "trunc_normal", ZegCLIP's ``init_weights``; the cross-attention's packed q/k/v weight
counts as a Linear).
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from .lcsa import LocalConsensusSelfAttention
from ..text_adapter import TextAdapter

__all__ = ["LCTDBlock", "LCTDHead"]


class LCTDBlock(nn.Module):
    """One LCTD block, eqs. (4)-(7), on B×(h·w)×d tokens and B×C×d class embeddings."""

    def __init__(
        self,
        dim: int,
        intermediate_dim: int,
        *,
        num_heads: int,
        window_size: int,
        topk: Optional[int],
        mlp_ratio: float,
        dropout: float,
        attn_dropout: float = 0.0,
        scale: str = "full_width",
        chunk_elements: int = 2 ** 18,
    ):
        super().__init__()
        self.skip = nn.Conv2d(intermediate_dim, dim, kernel_size=1)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)
        self.norm_sa = nn.LayerNorm(dim)
        self.self_attn = LocalConsensusSelfAttention(
            dim, num_heads=num_heads, window_size=window_size, topk=topk, dropout=dropout,
            attn_dropout=attn_dropout, scale=scale, chunk_elements=chunk_elements,
        )
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=attn_dropout, batch_first=True)
        self.cross_drop = nn.Dropout(dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(
        self, v: torch.Tensor, v_j: torch.Tensor, text: torch.Tensor, return_attention: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """v: B×(h·w)×d; v_j: B×width×h×w intermediate CLIP tokens; text: B×C×d (T_new).

        Returns B×(h·w)×d, and with ``return_attention`` also the cross-attention weights of eq. (6)
        averaged over heads, B×(h·w)×C (each image token's softmax over the classes)."""
        h, w = v_j.shape[-2:]
        # (4); the 1x1 conv applied as a Linear over tokens: same result, and its weight gradient stays
        # contiguous (a conv over the channels-last V_j gives a channels-last one, which DDP warns about)
        v = v + F.linear(v_j.flatten(2).transpose(1, 2), self.skip.weight.flatten(1), self.skip.bias)
        v = v + self.self_attn(self.norm_sa(v), h, w)  # (5)
        kv = self.norm_kv(text)
        attended, attn = self.cross_attn(self.norm_q(v), kv, kv, need_weights=return_attention)
        v = v + self.cross_drop(attended)  # (6)
        v = v + self.mlp(self.norm_mlp(v))  # (7)
        return (v, attn) if return_attention else v


@SEM_SEG_HEADS_REGISTRY.register()
class LCTDHead(nn.Module):
    """Text adapter (3) + N LCTD blocks (4)-(7) + class logits (13).

    ``forward(features, text)`` takes the backbone's output dict (``dense`` B×d×h×w, ``global`` B×d,
    ``intermediate``: N tensors B×width×h×w) and class embeddings ``text`` C×d, and returns logits
    B×C×h×w. ``forward(..., return_attention=True)`` returns ``(logits, attentions)``: one B×C×h×w
    tensor per block, the head-averaged cross-attention of eq. (6) (queries are the image tokens,
    keys the classes; it sums to 1 over C at every pixel) — the maps of the paper's Figs. 1 and 5,
    drawn by ``tools/visualize_attention.py``. Other heads that implement the same argument work
    with that tool.
    """

    @configurable
    def __init__(
        self,
        *,
        dim: int,
        intermediate_dim: int,
        num_blocks: int,
        num_heads: int,
        window_size: int,
        topk: Optional[int],
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        scale: str = "full_width",
        weight_init: str = "trunc_normal",
        text_adapter: bool = True,
        chunk_elements: int = 2 ** 18,
    ):
        super().__init__()
        if weight_init not in ("trunc_normal", "torch"):
            raise ValueError(f"MODEL.LDVC.LCTD.WEIGHT_INIT must be 'trunc_normal' or 'torch', got '{weight_init}'.")
        self.token_divisibility = window_size  # LCSA needs whole windows of tokens
        self.text_adapter = TextAdapter(dim) if text_adapter else None
        self.blocks = nn.ModuleList(
            LCTDBlock(
                dim, intermediate_dim, num_heads=num_heads, window_size=window_size, topk=topk,
                mlp_ratio=mlp_ratio, dropout=dropout, attn_dropout=attn_dropout, scale=scale,
                chunk_elements=chunk_elements,
            )
            for _ in range(num_blocks)
        )
        if weight_init == "trunc_normal":
            self._trunc_normal_init()

    def _trunc_normal_init(self) -> None:
        """ZegCLIP's decoder init: Linear (and packed q/k/v) weights N(0, 0.02²) truncated to ±2, biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.MultiheadAttention):
                nn.init.trunc_normal_(m.in_proj_weight, std=0.02)
                nn.init.zeros_(m.in_proj_bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        mode = cfg.MODEL.LDVC.LCTD.SELF_ATTENTION
        if mode not in ("lcsa", "global"):
            raise ValueError(f"MODEL.LDVC.LCTD.SELF_ATTENTION must be 'lcsa' or 'global', got '{mode}'.")
        return {
            "dim": input_shape["dense"].channels,
            "intermediate_dim": input_shape["intermediate"].channels,
            "num_blocks": cfg.MODEL.LDVC.LCTD.NUM_BLOCKS,
            "num_heads": cfg.MODEL.LDVC.LCTD.NUM_HEADS,
            "window_size": cfg.MODEL.LDVC.LCTD.WINDOW_SIZE,
            "topk": cfg.MODEL.LDVC.LCTD.TOPK_WINDOWS if mode == "lcsa" else None,
            "mlp_ratio": cfg.MODEL.LDVC.LCTD.MLP_RATIO,
            "dropout": cfg.MODEL.LDVC.LCTD.DROPOUT,
            "attn_dropout": cfg.MODEL.LDVC.LCTD.ATTN_DROPOUT,
            "scale": cfg.MODEL.LDVC.LCTD.SCALE,
            "weight_init": cfg.MODEL.LDVC.LCTD.WEIGHT_INIT,
            "text_adapter": cfg.MODEL.LDVC.LCTD.TEXT_ADAPTER,
            "chunk_elements": cfg.MODEL.LDVC.LCTD.CHUNK_ELEMENTS,
        }

    def adapt_text(self, text: torch.Tensor, global_feat: torch.Tensor) -> torch.Tensor:
        """C×d class embeddings -> B×C×d T_new (eq. 3), or T repeated per image without the adapter."""
        if self.text_adapter is None:
            return text.unsqueeze(0).expand(global_feat.shape[0], -1, -1)
        return self.text_adapter(text, global_feat)

    def forward(
        self, features: Dict[str, object], text: torch.Tensor, return_attention: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        dense = features["dense"]
        intermediate: List[torch.Tensor] = features["intermediate"]
        if len(intermediate) != len(self.blocks):
            raise ValueError(
                f"LCTDHead has {len(self.blocks)} blocks but the backbone returned {len(intermediate)} "
                "intermediate features; MODEL.LDVC.INTERMEDIATE_LAYERS needs one layer per block."
            )
        b, d, h, w = dense.shape
        t_new = self.adapt_text(text, features["global"])
        v = dense.flatten(2).transpose(1, 2)
        attentions: List[torch.Tensor] = []
        for block, v_j in zip(self.blocks, intermediate):
            if return_attention:
                v, attn = block(v, v_j, t_new, return_attention=True)
                attentions.append(attn.transpose(1, 2).reshape(b, -1, h, w))
            else:
                v = block(v, v_j, t_new)
        logits = torch.einsum("bcd,bld->bcl", t_new, v).view(b, -1, h, w)  # (13)
        return (logits, attentions) if return_attention else logits
