"""Small helpers shared by the tools: atomic file writes and pictures of predictions/attention."""
from .io import atomic_path, write_json_atomic, write_npy_atomic, write_png_atomic

__all__ = ["atomic_path", "write_json_atomic", "write_npy_atomic", "write_png_atomic"]
