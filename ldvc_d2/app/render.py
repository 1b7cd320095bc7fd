"""One method on one image: the timed prediction and the pictures and files the page shows for it.

The label map written for download is what ``demo/demo.py`` writes as ``<stem>_labels.png``: 8-bit,
pixel = class index in the vocabulary, 255 = unlabelled (only with a score threshold; the app takes at
most 255 classes).
"""
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from ..utils.io import write_png_atomic
from ..utils.visualization import draw_map_grid, draw_overlay, vocabulary_colors
from .methods import Method, ModelCache

__all__ = ["MethodResult", "colour_labels", "run_method"]

logger = logging.getLogger(__name__)
OVERLAY_MIN_SIDE = 384  # small images are drawn enlarged, so that class names stay legible
OVERLAY_MAX_SIDE = 2048  # ... but never beyond this long side


@dataclass
class MethodResult:
    """What the page shows for one method: a Markdown header, pictures (None when it failed) and the
    path of the label map PNG for download."""

    method: Method
    header: str
    overlay: Optional[np.ndarray] = None
    label_colours: Optional[np.ndarray] = None
    labels_file: Optional[str] = None
    scores: Optional[np.ndarray] = None
    seconds: float = 0.0
    error: str = ""
    labels: Optional[np.ndarray] = field(default=None, repr=False)


def colour_labels(labels: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """H×W class indices (negative = unlabelled) -> H×W×3 uint8 picture in the vocabulary's colours
    (unlabelled white)."""
    palette = np.array(list(colors) + [(255, 255, 255)], np.uint8)
    return palette[np.where(labels < 0, len(colors), labels)]


def _weights_line(method: Method, status: dict) -> str:
    if not method.weights:
        return "weights: none (training-free; CLIP from the config)"
    sha = status.get("sha256") or ""
    return f"weights: `{method.weights}`" + (f" (sha256 {sha[:12]}…)" if sha else "")


def run_method(cache: ModelCache, method: Method, image: np.ndarray, names: List[str], seen: Sequence[int],
               *, want_scores: bool, out_dir: str, stem: str, threshold: float = 0.0) -> MethodResult:
    """Segment ``image`` (H×W×3 uint8 RGB) with ``method`` and the vocabulary ``names``; a failure (a
    checkpoint that does not fit its config, an image the test resize cannot take) comes back as
    ``error``, never raised. ``seconds`` is the prediction alone; building the model on first use is
    timed apart in the header. Pixels whose best score is below ``threshold`` are unlabelled (255 in the
    label map PNG, white in the pictures)."""
    build = ""
    try:
        if not cache.cached(method):
            start = time.perf_counter()
            predictor = cache.get(method)
            build = f" (model built in {time.perf_counter() - start:.1f} s on first use)"
        predictor = cache.get(method)
    except Exception as e:  # any build / load failure is reported on the page
        logger.exception(f"Building '{method.name}' ({method.config}, weights '{method.weights}') failed")
        return _failed(method, f"the model could not be built: {_one_line(e)}")
    try:
        cache.make_room(method, names)
        start = time.perf_counter()
        out = predictor(image, names, seen_classes=seen, score_threshold=threshold)
        seconds = time.perf_counter() - start
    except Exception as e:  # e.g. an image too elongated for the test resize
        logger.exception(f"'{method.name}' failed on a {image.shape[1]}x{image.shape[0]} image")
        return _failed(method, _one_line(e))
    labels = out["labels"].numpy()
    colors = vocabulary_colors(len(names))
    try:
        overlay, labels_file, scores = _pictures(method, image, out, labels, names, colors, want_scores, out_dir, stem)
    except Exception as e:  # drawing or writing failed: the prediction is still reported, the server goes on
        logger.exception(f"Drawing the result of '{method.name}' failed")
        return _failed(method, f"the result could not be drawn: {_one_line(e)}")
    header = (f"### {method.name}\n**{seconds:.2f} s**{build}  \nconfig: `{method.config}`  \n"
              f"{_weights_line(method, predictor.weights_status)}")
    return MethodResult(method, header, overlay, colour_labels(labels, colors), labels_file, scores, seconds,
                        labels=labels)


def _pictures(method: Method, image: np.ndarray, out: dict, labels: np.ndarray, names: List[str],
              colors: Sequence, want_scores: bool, out_dir: str, stem: str):
    """(overlay, label map PNG path, score grid or None) of one prediction."""
    short, long = min(image.shape[:2]), max(image.shape[:2])
    min_side = min(float(OVERLAY_MIN_SIDE), short * max(1.0, OVERLAY_MAX_SIDE / long))
    overlay = draw_overlay(image, labels, names, colors, min_side=min_side)
    labels_file = os.path.join(out_dir, f"{stem}_labels.png")
    write_png_atomic(labels_file, np.where(labels < 0, 255, labels).astype(np.uint8))
    scores = None
    if want_scores:
        scores = draw_map_grid(image, [("input", out["sem_seg"].numpy())], names,
                               title=f"{method.name}: class scores", colorbar_label="sigmoid score")
    return overlay, labels_file, scores


def _failed(method: Method, message: str) -> MethodResult:
    header = f"### {method.name}\n**Error:** {message}  \nconfig: `{method.config}`  \n" + (
        f"weights: `{method.weights}`" if method.weights else "weights: none (training-free)")
    return MethodResult(method, header, error=message)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    first = text.splitlines()[0]
    return first if len(first) <= 600 else first[:600] + "…"


def request_folder(root: str) -> str:
    """A new folder under ``root`` for one request's files (served for download, deleted with ``root``)."""
    return tempfile.mkdtemp(prefix="result-", dir=root)
