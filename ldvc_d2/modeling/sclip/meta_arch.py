"""The SCLIP meta-architecture (Wang et al., ECCV 2024), training-free.

Correlative self-attention: A = softmax(s q qᵀ) + softmax(s k kᵀ) (the two branches summed, rows
summing to 2, as the released ``custom_attn``: ``attn_weights = q_attn + k_attn``), output W_o(A v) + b_o. The
block keeps its residual and feed-forward (released ``clip/model.py``: ``x = x + custom_attn(...)``, ``x = x +
mlp(ln_2(x))``). :class:`~ldvc_d2.modeling.clip.attention.SelfCorrelationAttention` with branches ["q", "k"].
"""
from typing import Dict, List

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..clip.attention import SelfCorrelationAttention
from ..clip.surgery import BlockHook
from ..training_free import TrainingFreeCLIPSegmentor, training_free_args

__all__ = ["SCLIP"]


@META_ARCH_REGISTRY.register()
class SCLIP(TrainingFreeCLIPSegmentor):
    """Training-free; built with no MODEL.WEIGHTS."""

    @configurable
    def __init__(self, *, attention_layer: int = -1, **kwargs):
        """attention_layer: MODEL.SCLIP.ATTENTION_LAYER; kwargs: :class:`TrainingFreeCLIPSegmentor`'s."""
        super().__init__(**kwargs)
        self.attention_layer = attention_layer
        self.attention = SelfCorrelationAttention(("q", "k"))

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        return {**training_free_args(cfg), "attention_layer": cfg.MODEL.SCLIP.ATTENTION_LAYER}

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        return f"{super().describe_protocol(cfg)}, correlative self-attention (q+k) in block {cfg.MODEL.SCLIP.ATTENTION_LAYER}"

    def hooks(self, h: int, w: int) -> List[BlockHook]:
        return [BlockHook(layer=self.attention_layer, attn_fn=self.attention)]
