"""The ClearCLIP meta-architecture (Lan et al., ECCV 2024), training-free.

The last block's output is X = Proj(Attn_qq(ln_1(x))): query-query self-attention softmax(s q qᵀ) v through the
output projection (W_o, b_o), with "the residual connection removed" and "the feed-forward network discarded", then
``ln_post`` and ``proj`` (released ``open_clip/transformer.py``: ``attn_type 'q-q'``, returning the attention output
without residual and FFN). MODEL.CLEARCLIP.{ATTENTION, RESIDUAL, FFN} switch each piece back (the paper's ablation).
"""
from typing import Dict, List

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..clip.attention import softmax_attention
from ..clip.surgery import BlockHook
from ..training_free import TrainingFreeCLIPSegmentor, training_free_args

__all__ = ["ClearCLIP"]


def _attention(name: str):
    a, b = name[0], name[1]

    def attn(q, k, v):
        t = {"q": q, "k": k, "v": v}
        return softmax_attention(t[a], t[b], v)

    return attn


@META_ARCH_REGISTRY.register()
class ClearCLIP(TrainingFreeCLIPSegmentor):
    """Training-free; built with no MODEL.WEIGHTS."""

    @configurable
    def __init__(self, *, attention: str = "qq", residual: bool = False, ffn: bool = False, **kwargs):
        """attention / residual / ffn: MODEL.CLEARCLIP.*; kwargs: :class:`TrainingFreeCLIPSegmentor`'s."""
        if attention not in ("qq", "kk", "vv", "qk"):
            raise ValueError(f"MODEL.CLEARCLIP.ATTENTION must be 'qq', 'kk', 'vv' or 'qk', got '{attention}'.")
        super().__init__(**kwargs)
        self.attention, self.residual, self.ffn = attention, bool(residual), bool(ffn)

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        c = cfg.MODEL.CLEARCLIP
        return {**training_free_args(cfg), "attention": c.ATTENTION, "residual": c.RESIDUAL, "ffn": c.FFN}

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        c = cfg.MODEL.CLEARCLIP
        return (f"{super().describe_protocol(cfg)}, last block: {c.ATTENTION} attention, residual "
                f"{'on' if c.RESIDUAL else 'off'}, feed-forward {'on' if c.FFN else 'off'}")

    def hooks(self, h: int, w: int) -> List[BlockHook]:
        return [BlockHook(layer=-1, attn_fn=_attention(self.attention), residual=self.residual, ffn=self.ffn)]
