"""Small helpers below data, models and engine (they import none of them): file I/O (atomic writes, label
PNGs), class colours, loss-normaliser notes, precision, pictures of predictions/attention, and the tools'
measurements (time, memory, parameters, FLOPs)."""
from .io import atomic_path, write_json_atomic, write_npy_atomic, write_png_atomic

__all__ = ["atomic_path", "write_json_atomic", "write_npy_atomic", "write_png_atomic"]
