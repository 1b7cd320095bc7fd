"""ClearCLIP (training-free): query-query attention, no residual, no feed-forward in the last block (meta_arch.py)."""
from .meta_arch import ClearCLIP

__all__ = ["ClearCLIP"]
