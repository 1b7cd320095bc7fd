"""What the page sends, checked: the uploaded image, the vocabulary, the picked example and class list.

Every problem is an :class:`InputError` whose message is shown on the page as it is. Uploads are read
once and deleted at once (:func:`read_upload`); their pixel count is checked from the file's header
before any pixel is decoded.
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog

from ..data.image_io import decode_image
from ..predictor import check_class_names

__all__ = [
    "InputError", "Limits", "VOCABULARY_DATASETS", "dataset_class_lists", "parse_vocabulary", "read_upload",
    "shapes_examples",
]

# The class lists offered in the page's menu (those registered and within the class limit).
VOCABULARY_DATASETS: Tuple[str, ...] = (
    "shapes_zs_val", "voc_zs_val", "voc21_val", "context59_zs_val", "context60_val", "coco_object_val",
    "ade150_val", "coco_stuff_zs_val",
)


class InputError(ValueError):
    """A problem with what the user sent; the message is for the page."""


@dataclass(frozen=True)
class Limits:
    """What one request may send: file size (bytes), image pixels (width × height), classes."""

    max_bytes: int = 20 * 2**20
    max_pixels: int = 16_000_000
    max_classes: int = 200


def read_upload(path: str, limits: Limits, upload_root: Optional[str] = None) -> Tuple[np.ndarray, str]:
    """(H×W×3 uint8 RGB image, file name) of an uploaded file; the file is deleted whatever happens (and its
    folder when it is empty and inside ``upload_root``, where the web framework put it)."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        if size > limits.max_bytes:
            raise InputError(f"'{name}' is {size / 2**20:.1f} MiB, over the upload limit of "
                             f"{limits.max_bytes / 2**20:.0f} MiB; send a smaller image.")
        with open(path, "rb") as f:
            data = f.read()
    finally:
        _remove_upload(path, upload_root)
    try:
        image = decode_image(data, name, format="RGB", max_pixels=limits.max_pixels)
    except ValueError as e:
        raise InputError(f"{e} Send a PNG, JPEG, BMP, TIFF or WebP image.") from None
    if min(image.shape[:2]) < 1:
        raise InputError(f"'{name}' has no pixels ({image.shape[1]}x{image.shape[0]}).")
    return image, name


def _remove_upload(path: str, upload_root: Optional[str]) -> None:
    try:
        os.remove(path)
    except OSError:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if upload_root and os.path.commonpath([folder, os.path.abspath(upload_root)]) == os.path.abspath(upload_root) \
            and folder != os.path.abspath(upload_root):
        try:
            os.rmdir(folder)  # only when empty
        except OSError:
            pass


def parse_vocabulary(text: Optional[str], max_classes: int) -> List[str]:
    """Comma-separated class names -> the list; empty, too long, blank or duplicate entries are refused."""
    if text is None or not text.strip():
        raise InputError("The vocabulary is empty: type class names separated by commas (e.g. \"cat, sofa, lamp\"), "
                         "or pick a dataset's class list.")
    parts = text.split(",")
    if parts and not parts[-1].strip():
        parts = parts[:-1]  # a trailing comma
    if len(parts) > max_classes:
        raise InputError(f"The vocabulary has {len(parts)} classes; this server takes at most {max_classes}. "
                         "Keep the classes you are looking for.")
    try:
        return check_class_names(parts, "Vocabulary")
    except ValueError as e:
        raise InputError(str(e)) from None


def dataset_class_lists(max_classes: int,
                        names: Sequence[str] = VOCABULARY_DATASETS) -> Dict[str, Tuple[List[str], List[int]]]:
    """{menu label: (class names, seen class indices)} of the registered datasets of ``names`` with at most
    ``max_classes`` classes; the label reads "voc_zs_val (20 classes)"."""
    lists = {}
    registered = set(MetadataCatalog.list())
    for dataset in names:
        if dataset not in registered:
            continue
        meta = MetadataCatalog.get(dataset)
        classes = list(meta.get("stuff_classes", None) or [])
        if classes and len(classes) <= max_classes:
            lists[f"{dataset} ({len(classes)} classes)"] = (classes, list(meta.get("seen_classes", None) or []))
    return lists


def shapes_examples(count: int = 4, size: int = 128) -> Dict[str, np.ndarray]:
    """{label: H×W×3 uint8 RGB image}: scenes of the shapes benchmark drawn by its renderer (fixed seeds),
    each labelled with what it shows, unseen classes included."""
    from ..benchmarks.shapes.world import CLASS_NAMES, UNSEEN_CLASSES, make_caption, render_scene

    examples = {}
    for i in range(count):
        rng = np.random.default_rng([2026, i])
        unseen = UNSEEN_CLASSES[i % len(UNSEEN_CLASSES)]
        others = [int(k) for k in rng.permutation(len(CLASS_NAMES)) if k != unseen][:2]
        image, _, drawn = render_scene(rng, [unseen] + others, size)
        examples[f"example {i + 1}: {make_caption(drawn)}"] = image
    return examples
