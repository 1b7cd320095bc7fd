"""Ground truth as the evaluator scores it: the stored index PNG, an optional label map, and the test
for images without any object label.

Both options exist for CLIPtrase's parity sets (SEED_SYSTEMS §2.2, "Known quirks"): its official
script scores label maps that differ from the stored ones (VOC-21 from the 20-class maps with every
255 turned into background, ``clip_self_correlation.py:164-166``; COCO-Object from the 171-class
COCO-Stuff maps with 81 classes, ``configs/dataset_cfg.py:12-16``) and skips an image whose label
set, once its 255 pixels are left out, is empty (``clip_self_correlation.py:131-140``). The label map
is metadata of the registered set (``gt_label_map``), so the clean sets and the official variants
read the same files.
"""
from typing import Any, Iterable, Mapping

import numpy as np
from PIL import Image

from detectron2.utils.file_io import PathManager

__all__ = ["apply_label_map", "has_object_label", "label_map_lut", "read_index_png"]

_PNG_VALUES = 1 << 16  # 8- and 16-bit index PNGs: every stored value is below this


def read_index_png(gt_file: str) -> np.ndarray:
    """Read a single-channel index PNG as an (H, W) int64 array; a clear error otherwise."""
    try:
        with PathManager.open(gt_file, "rb") as f:
            gt = np.asarray(Image.open(f), dtype=np.int64)
    except OSError as e:  # unreadable, truncated or not an image
        raise ValueError(f"Ground truth '{gt_file}' cannot be read ({type(e).__name__}: {e}).") from e
    if gt.ndim != 2:
        raise ValueError(
            f"Ground truth '{gt_file}' has shape {gt.shape}; expected a single-channel index PNG "
            "(values = class index). Convert color-coded label maps to class indices first."
        )
    return gt


def label_map_lut(mapping: Mapping[Any, Any], dataset_name: str) -> np.ndarray:
    """A lookup table ``lut`` with ``lut[v] = mapping[v]`` for the keys of ``mapping`` and ``v``
    otherwise (int64, length ``max(65536, largest key + 1)``).

    ``mapping``: the ``gt_label_map`` metadata of ``dataset_name``, stored value -> scored value
    (non-negative ints; the scored value must be a class index or the set's ignore label, which the
    evaluator checks per image).
    """
    try:
        pairs = [(int(k), int(v)) for k, v in dict(mapping).items()]
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"Dataset '{dataset_name}': metadata 'gt_label_map' must be a dict of int -> int "
            f"(stored label -> scored label); got {type(mapping).__name__} ({e})."
        ) from e
    negative = sorted({x for pair in pairs for x in pair if x < 0})
    if negative:
        raise ValueError(f"Dataset '{dataset_name}': metadata 'gt_label_map' holds negative labels {negative}.")
    lut = np.arange(max([_PNG_VALUES] + [k + 1 for k, _ in pairs]), dtype=np.int64)
    for key, value in pairs:
        lut[key] = value
    return lut


def apply_label_map(gt: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``gt`` with every value ``v`` replaced by ``lut[v]`` (values beyond the table unchanged)."""
    if gt.size and gt.max() >= lut.size:
        return np.where(gt < lut.size, lut[np.minimum(gt, lut.size - 1)], gt)
    return lut[gt]


def has_object_label(gt: np.ndarray, no_object_labels: Iterable[int]) -> bool:
    """Whether ``gt`` holds a pixel whose value is not in ``no_object_labels`` (e.g. background
    and ignore)."""
    return bool(np.isin(gt, np.asarray(list(no_object_labels), dtype=np.int64), invert=True).any())
