"""MaskCLIP (training-free): the last block's value embeddings as dense features (meta_arch.py)."""
from .meta_arch import MaskCLIP

__all__ = ["MaskCLIP"]
