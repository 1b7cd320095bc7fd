"""The evaluator's confusion matrix on disk: ``sem_seg_confusion.npz`` beside ``sem_seg_metrics.json``.

A (C+1)×(C+1) int64 matrix (rows: ground truth, columns: prediction, last row: ignored pixels) is
about 720,000 numbers for ADE20K-full (847 classes); as JSON text it made the metrics file tens of
megabytes. It is stored as one compressed NumPy array ``confusion_matrix`` instead, written under a
temporary name then renamed, and read back without pickle (``np.load(allow_pickle=False)``), so a
downloaded file cannot run code. The metrics JSON names the file, its shape and its layout.
"""
import os
from typing import Optional

import numpy as np

from ..utils.io import atomic_path

__all__ = ["CONFUSION_FILE", "CONFUSION_LAYOUT", "load_confusion_matrix", "save_confusion_matrix"]

CONFUSION_FILE = "sem_seg_confusion.npz"
CONFUSION_LAYOUT = "rows: ground truth, columns: prediction, last row: ignored pixels"
_KEY = "confusion_matrix"


def save_confusion_matrix(output_dir: str, conf: np.ndarray) -> str:
    """Write ``conf`` (square, integer) to ``output_dir/sem_seg_confusion.npz`` atomically; returns the path."""
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.dtype.kind not in "iu":
        raise ValueError(f"A confusion matrix is a square integer array, got {conf.dtype} {conf.shape}.")
    path = os.path.join(output_dir, CONFUSION_FILE)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **{_KEY: conf.astype(np.int64)})
    return path


def load_confusion_matrix(path: str, num_classes: Optional[int] = None) -> np.ndarray:
    """The int64 (C+1)×(C+1) matrix of ``path`` (the ``.npz`` file, or the folder holding it, e.g.
    ``OUTPUT_DIR/inference/<dataset>``); ``num_classes`` C, if given, is checked. Errors name the file."""
    if os.path.isdir(path):
        path = os.path.join(path, CONFUSION_FILE)
    try:
        with np.load(path, allow_pickle=False) as data:
            conf = data[_KEY]
    except (OSError, ValueError, KeyError) as e:  # missing, damaged, pickled object arrays, other keys
        raise ValueError(f"Cannot read the confusion matrix '{path}' ({type(e).__name__}: {e}); it is the "
                         f"'{_KEY}' array that the evaluator writes next to sem_seg_metrics.json.") from e
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.dtype.kind not in "iu":
        raise ValueError(f"'{path}': '{_KEY}' is {conf.dtype} {conf.shape}, not a square integer matrix.")
    if num_classes is not None and conf.shape[0] != num_classes + 1:
        raise ValueError(f"'{path}': confusion matrix is {conf.shape[0]}x{conf.shape[1]}, expected "
                         f"{num_classes + 1}x{num_classes + 1} for {num_classes} classes (+1: ignored pixels).")
    return conf.astype(np.int64)
