"""Prompted encoders over open_clip modules (VLPT, LDVC §3.2) and CLIP loading."""
from .loading import build_clip_model
from .text import PromptedTextEncoder, RandomClassEmbedding
from .vision import PromptedVisionEncoder

__all__ = ["PromptedTextEncoder", "RandomClassEmbedding", "PromptedVisionEncoder", "build_clip_model"]
