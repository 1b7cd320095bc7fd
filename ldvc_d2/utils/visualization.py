"""Pictures of predictions and attention maps for the demo and the attention tool.

* :func:`draw_overlay`: the label map over the image with Detectron2's ``Visualizer`` (class names
  at the segments) and a legend panel on the right listing the predicted classes by area.
* :func:`draw_map_grid`: per-class maps (sigmoid scores, attention) as a grid of heat maps over the
  image, one panel per class titled with its name, one block of panels per row label (e.g. LCSA on
  and off), on a shared colour scale.
"""
import math
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.utils.visualizer import Visualizer
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .palette import class_colors

__all__ = ["draw_map_grid", "draw_overlay", "vocabulary_colors"]

RGB = Tuple[int, int, int]


def vocabulary_colors(num_classes: int) -> List[RGB]:
    """One distinct RGB colour per class, the registered datasets' ``stuff_colors``
    (:func:`.palette.class_colors`: the VOC palette rule, distinct for up to 2**24 - 1 classes, so
    ADE20K-full's 847 and Context-459's classes each get their own)."""
    return class_colors(num_classes)


def _legend(entries: Sequence[Tuple[str, RGB]], height: int, width: int = 0) -> np.ndarray:
    """White H×W×3 panel with a colour swatch and a name per entry, one entry per line."""
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    line = 18
    (text_w, _), _ = cv2.getTextSize("M" * max([len(n) for n, _ in entries] + [10]), font, scale, thick)
    width = width or text_w + 36
    panel = np.full((max(height, line * len(entries) + 8), width, 3), 255, np.uint8)
    for i, (name, color) in enumerate(entries):
        y = 6 + i * line
        cv2.rectangle(panel, (6, y), (20, y + 12), tuple(int(c) for c in color), thickness=-1)
        cv2.rectangle(panel, (6, y), (20, y + 12), (0, 0, 0), thickness=1)
        cv2.putText(panel, name, (26, y + 11), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return panel


def draw_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    colors: Sequence[RGB],
    *,
    alpha: float = 0.6,
    min_side: int = 384,
) -> np.ndarray:
    """H×W×3 uint8 RGB image + H×W label map (class index; any value outside [0, C) is drawn as
    unlabelled) -> RGB overlay with the segments' names and a legend of the predicted classes
    (largest first, with their share of the image). Images whose short side is below ``min_side``
    are drawn enlarged to it."""
    num = len(class_names)
    labels = np.where((labels >= 0) & (labels < num), labels, num)  # Visualizer skips labels >= C
    meta = Metadata(stuff_classes=list(class_names), stuff_colors=[list(c) for c in colors])
    scale = max(1.0, min_side / min(image.shape[:2]))  # small images are enlarged so names stay legible
    drawn = Visualizer(image, meta, scale=scale).draw_sem_seg(labels, alpha=alpha).get_image()
    ids, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts)
    entries = [(f"{class_names[i]} {100.0 * c / labels.size:.1f}%", colors[i])
               for i, c in zip(ids[order], counts[order]) if i < num]
    if (labels == num).any():
        entries.append((f"(unlabelled) {100.0 * (labels == num).mean():.1f}%", (255, 255, 255)))
    legend = _legend(entries, drawn.shape[0])
    canvas = np.full((legend.shape[0], drawn.shape[1] + legend.shape[1], 3), 255, np.uint8)
    canvas[: drawn.shape[0], : drawn.shape[1]] = drawn
    canvas[:, drawn.shape[1]:] = legend
    return canvas


def draw_map_grid(
    image: np.ndarray,
    blocks: Sequence[Tuple[str, np.ndarray]],
    titles: Sequence[str],
    *,
    columns: int = 6,
    vmin: float = 0.0,
    vmax: float = 1.0,
    title: Optional[str] = None,
    colorbar_label: str = "",
) -> np.ndarray:
    """Grid of heat maps over ``image`` (H×W×3 uint8 RGB) -> RGB uint8 picture.

    ``blocks``: (label, C×h×w maps) pairs, e.g. ``[("LCSA on", a), ("LCSA off", b)]``; each block
    shows the image (titled with the label) and then one panel per class titled ``titles[c]``,
    wrapped after ``columns`` panels. Maps are resized (bilinear) to the image size and share the
    colour scale [vmin, vmax], so panels and blocks compare directly.
    """
    h, w = image.shape[:2]
    n = len(titles)
    lines_per_block = math.ceil((n + 1) / columns)
    cols = min(columns, n + 1)
    rows = lines_per_block * len(blocks)
    panel = 2.2
    fig = Figure(figsize=(panel * cols + 0.8, panel * h / w * rows + 0.35 * rows + (0.5 if title else 0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    mappable = None
    for b, (label, maps) in enumerate(blocks):
        if maps.shape[0] != n:
            raise ValueError(f"Block '{label}' has {maps.shape[0]} maps for {n} titles.")
        panels = [None] + list(range(n))
        for k in range(lines_per_block * cols):
            ax = axes[b * lines_per_block + k // cols, k % cols]
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(panels):
                ax.axis("off")
                continue
            ax.imshow(image)
            if panels[k] is None:
                ax.set_title(label, fontsize=9, fontweight="bold")
                continue
            m = cv2.resize(maps[panels[k]].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            mappable = ax.imshow(m, cmap="jet", alpha=0.55, vmin=vmin, vmax=vmax)
            ax.set_title(titles[panels[k]], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label=colorbar_label)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
