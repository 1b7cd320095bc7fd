"""NACLIP (training-free): neighbourhood-prior key-key attention, reduced last block (meta_arch.py)."""
from .meta_arch import NACLIP

__all__ = ["NACLIP"]
