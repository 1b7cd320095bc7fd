"""SCLIP (training-free): correlative self-attention in the last block (meta_arch.py)."""
from .meta_arch import SCLIP

__all__ = ["SCLIP"]
