"""Prompted encoders over open_clip modules (VLPT, LDVC §3.2) and CLIP loading."""
from .loading import build_clip_model
from .surgery import BlockHook, block_qkv, run_block_with_attention
from .templates import TEMPLATE_SETS, resolve_templates
from .text import PromptedTextEncoder, RandomClassEmbedding, TemplateEnsembleTextEncoder
from .vision import PromptedVisionEncoder

__all__ = [
    "BlockHook", "PromptedTextEncoder", "PromptedVisionEncoder", "RandomClassEmbedding", "TEMPLATE_SETS",
    "TemplateEnsembleTextEncoder", "block_qkv", "build_clip_model", "resolve_templates", "run_block_with_attention",
]
