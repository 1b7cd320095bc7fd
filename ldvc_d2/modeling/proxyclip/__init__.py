"""ProxyCLIP (training-free): the last block's attention from a vision foundation model's features (meta_arch.py)."""
from .meta_arch import ProxyCLIP
from .vfm import TimmVFM, build_vfm, proxy_attention

__all__ = ["ProxyCLIP", "TimmVFM", "build_vfm", "proxy_attention"]
