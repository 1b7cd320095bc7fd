"""The shapes world's renderer: its 16 colour × pattern classes and how a scene of them is drawn.

Every class is a colour × surface-pattern combination: colours red, green, blue, yellow; patterns
plain, striped, dotted, checkered (16 classes). Class names read ``"<pattern> <colour> shape"``
("plain red shape", "striped red shape", ..., "checkered yellow shape"), so they are natural noun
phrases both alone and in prompt templates ("this is a photo of a dotted blue shape."); class index
= colour index × 4 + pattern index. The four unseen classes lie on a Latin-square diagonal, so each
is a *new combination* of a colour and a pattern that both occur in seen classes: a model can only
segment them by composing attributes it learned from language.

The pattern (not the outline) is the second attribute because it is visible locally: every 8×8
patch of an object shows it, as real segmentation classes are mostly recognisable from local
texture. Patterns alternate the object colour with a darker tone of the same hue (×0.4..0.55):
striped (period 6–8 px, random orientation), dotted (dark dots of radius 1.6–2 px on a 6–7 px
lattice, random rotation), checkered (cells 4–5.5 px, random rotation), plain (solid). Their scales
are in pixels, so a pattern looks the same in 48–64 px pretraining images and 128 px scenes; an
object's mean colour stays close to its class colour. Outlines (circle, square, triangle, star) are
random per object and carry no class information.

Images are small RGB scenes (default 128×128) of 1–4 anti-aliased, rotated, possibly overlapping
objects on a muted (unsaturated) textured background, with colour jitter, shading and pixel noise.
Labels: class index 0..15, 255 = background (ignored, like VOC background); captions name each
drawn class with its count ("a striped red shape and two dotted blue shapes").

The dataset files, their generation and their registration with detectron2 are in
:mod:`.dataset`, which re-exports this module's public names.
"""
import colorsys
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "COLORS", "PATTERNS", "OUTLINES", "COLOR_RGB", "CLASS_NAMES", "SEEN_CLASSES", "UNSEEN_CLASSES",
    "STUFF_COLORS", "IGNORE_LABEL", "GENERATOR_VERSION", "make_caption", "render_scene", "sample_object_image",
]

COLORS: Tuple[str, ...] = ("red", "green", "blue", "yellow")
PATTERNS: Tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
# Nominal colours; objects are jittered around them in HSV (hue ±6°, which keeps the four apart).
COLOR_RGB: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 35, 35), "green": (40, 170, 55), "blue": (40, 90, 230), "yellow": (235, 205, 35),
}
# Class index = colour index * len(PATTERNS) + pattern index; names read "<pattern> <colour> shape".
CLASS_NAMES: Tuple[str, ...] = tuple(f"{p} {c} shape" for c in COLORS for p in PATTERNS)
# Latin-square diagonal: colour i with pattern 3 - i. Every colour and pattern stays in 3 seen
# classes.
UNSEEN_CLASSES: List[int] = [
    CLASS_NAMES.index(f"{PATTERNS[len(PATTERNS) - 1 - i]} {c} shape") for i, c in enumerate(COLORS)]
SEEN_CLASSES: List[int] = [i for i in range(len(CLASS_NAMES)) if i not in UNSEEN_CLASSES]
# Visualisation colours: the class colour, shaded differently per pattern (distinct over all 16).
_SHADES = ((1.0, 0.0), (0.55, 0.0), (0.5, 127.0), (0.3, 40.0))  # (scale, offset) per pattern
STUFF_COLORS: List[List[int]] = [[int(v * _SHADES[p][0] + _SHADES[p][1]) for v in COLOR_RGB[c]]
                                 for c in COLORS for p in range(len(PATTERNS))]

IGNORE_LABEL = 255
GENERATOR_VERSION = 2  # bump whenever the drawing code changes: existing datasets are regenerated
_NUMBER_WORDS = ("a", "two", "three", "four", "five", "six")


def _unit_polygon(n: int, radii: Sequence[float], start: float) -> np.ndarray:
    """(n, 2) vertices at angles ``start + 2πi/n``, radii cycling through ``radii``."""
    angles = start + 2 * np.pi * np.arange(n) / n
    r = np.resize(np.asarray(radii, np.float64), n)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


# Object outlines (random per object, not part of the class). Circumradius 1, centred at the origin.
_UNIT_POLYGONS = {
    "circle": _unit_polygon(48, [1.0], 0.0),
    "square": _unit_polygon(4, [1.0], np.pi / 4),
    "triangle": _unit_polygon(3, [1.0], -np.pi / 2),
    "star": _unit_polygon(10, [1.0, 0.42], -np.pi / 2),
}
OUTLINES: Tuple[str, ...] = tuple(_UNIT_POLYGONS)
# Per-outline radius factors that bring the areas of the four outlines within ~1.3× of each other.
_RADIUS_SCALE = {"circle": 0.85, "square": 1.0, "triangle": 1.15, "star": 1.2}
# Pattern geometry in pixels (not relative to the image size: a pattern looks the same in 48 px
# pretraining crops and 128 px scenes, and every 8×8 patch of an object shows it). ``_DARK`` is the
# brightness of the pattern's second tone relative to the object colour (same hue).
_STRIPE_PERIOD = (6.0, 8.0)
_DOT_SPACING, _DOT_RADIUS = (6.0, 7.0), (1.6, 2.0)
_CHECK_CELL = (4.0, 5.5)
_DARK = (0.4, 0.55)


def _shape_alpha(shape: str, center: np.ndarray, radius: float, angle: float,
                 size: int) -> np.ndarray:
    """Anti-aliased coverage (size×size uint8, 0..255) of a rotated outline, 1/16 px precision."""
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = (_UNIT_POLYGONS[shape] @ rot.T) * radius + center
    alpha = np.zeros((size, size), np.uint8)
    cv2.fillPoly(alpha, [np.round(pts * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA,
                 shift=4)
    return alpha


def _pattern(pattern: str, xx: np.ndarray, yy: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """Pattern weight at pixel centres ``xx, yy`` (float32 grids): 1 = the object colour, 0 = its
    dark tone, anti-aliased over ~1 px. Random orientation and phase; scales in pixels.

    * plain: 1 everywhere
    * striped: straight stripes of equal width, period 6–8 px
    * dotted: dark dots (radius 1.6–2 px) on a square lattice of spacing 6–7 px
    * checkered: checkerboard of cells 4–5.5 px
    """
    if pattern == "plain":
        return np.ones_like(xx)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta) + rng.uniform(0, 100)
    v = -xx * np.sin(theta) + yy * np.cos(theta) + rng.uniform(0, 100)
    if pattern == "striped":
        period = rng.uniform(*_STRIPE_PERIOD)
        d = np.abs((u / period) % 1.0 - 0.5) * period  # distance to the middle of a light stripe
        return np.clip(period / 4 - d + 0.5, 0.0, 1.0)
    if pattern == "dotted":
        spacing, r = rng.uniform(*_DOT_SPACING), rng.uniform(*_DOT_RADIUS)
        du = ((u / spacing) % 1.0 - 0.5) * spacing
        dv = ((v / spacing) % 1.0 - 0.5) * spacing
        return np.clip(np.sqrt(du * du + dv * dv) - r + 0.5, 0.0, 1.0)
    if pattern == "checkered":
        cell = rng.uniform(*_CHECK_CELL)
        # Signed distances (in px) to the nearest cell edge along u and v; their product's sign
        # alternates from cell to cell.
        su = np.clip((0.5 - np.abs((u / cell) % 2.0 - 1.0)) * cell + 0.5, 0.0, 1.0) * 2 - 1
        sv = np.clip((0.5 - np.abs((v / cell) % 2.0 - 1.0)) * cell + 0.5, 0.0, 1.0) * 2 - 1
        return 0.5 + 0.5 * su * sv
    raise ValueError(f"unknown pattern {pattern!r}")


def _muted_rgb(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation colour: backgrounds must never look like a class colour."""
    hsv = rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.8)
    return np.array(colorsys.hsv_to_rgb(*hsv))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 in 0..1: smooth noise, stripes or a gradient between two muted
    colours."""
    kind = rng.integers(3)
    if kind == 0:
        grid = rng.random((int(rng.integers(2, 7)),) * 2).astype(np.float32)
        t = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    else:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        theta = rng.uniform(0, np.pi)
        proj = xx * np.cos(theta) + yy * np.sin(theta)
        if kind == 1:
            t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 8) * proj)
        else:
            t = (proj - proj.min()) / np.ptp(proj)
    c0, c1 = _muted_rgb(rng), _muted_rgb(rng)
    return (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.float32)


def _jittered_rgb(rng: np.random.Generator, color: str) -> np.ndarray:
    """The nominal colour jittered in HSV: hue ±6°, saturation ×0.85..1, value ×0.8..1.05."""
    h, s, v = colorsys.rgb_to_hsv(*(np.array(COLOR_RGB[color]) / 255.0))
    h = (h + rng.uniform(-6, 6) / 360.0) % 1.0
    s, v = min(1.0, s * rng.uniform(0.85, 1.0)), min(1.0, v * rng.uniform(0.8, 1.05))
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def _paint(image: np.ndarray, alpha: np.ndarray, rgb: np.ndarray, pattern: str,
           center: np.ndarray, radius: float, rng: np.random.Generator) -> None:
    """Alpha-composite the object, ``rgb`` filled with ``pattern`` (the colour alternating with a
    darker tone of it, ×0.4..0.55), into ``image`` (float32 HxWx3, in place) with a random linear
    shading (brightness ×0.88..1.12 across the object), touching only the object's bounding box."""
    size = image.shape[0]
    x0, y0 = np.clip(np.floor(center - radius) - 1, 0, size).astype(int)
    x1, y1 = np.clip(np.ceil(center + radius) + 2, 0, size).astype(int)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    weight = _pattern(pattern, xx + 0.5, yy + 0.5, rng)
    dark = rng.uniform(*_DARK)
    tilt, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.12)
    ramp = ((xx - center[0]) * np.cos(tilt) + (yy - center[1]) * np.sin(tilt)) / radius
    shaded = ((1.0 + strength * ramp) * (dark + (1.0 - dark) * weight))[..., None] * rgb
    a = alpha[y0:y1, x0:x1, None].astype(np.float32) / 255.0
    image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - a) + a * shaded


def render_scene(rng: np.random.Generator, class_ids: Sequence[int], size: int = 128,
                 radius_range: Tuple[float, float] = (0.1, 0.22),
                 ) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    """Draw the given classes (in order, later ones on top) on a textured background.

    Overlap is allowed, but a placement that would hide more than 40% of an earlier object is
    retried (up to 30 times, then the object is dropped), so every object a caption names is
    visible. Each object gets a random outline (circle, square, triangle or star; not part of its
    class), rotation and position, and is filled with its class's colour and pattern.
    ``radius_range`` is the circumradius as a fraction of ``size`` (scaled per outline so that the
    outlines have similar areas).

    Returns the image (size×size×3 uint8 RGB), the label (size×size uint8, class index or 255) and
    the class indices actually drawn, in drawing order.
    """
    image = _background(rng, size)
    label = np.full((size, size), IGNORE_LABEL, np.uint8)
    owner = np.full((size, size), -1, np.int16)  # which drawn object owns each labelled pixel
    areas: List[int] = []
    drawn: List[int] = []
    for k in class_ids:
        color, pattern = COLORS[k // len(PATTERNS)], PATTERNS[k % len(PATTERNS)]
        shape = OUTLINES[rng.integers(len(OUTLINES))]
        for _ in range(30):
            radius = min(rng.uniform(*radius_range) * _RADIUS_SCALE[shape], 0.49) * size
            center = rng.uniform(radius, size - radius, size=2)
            alpha = _shape_alpha(shape, center, radius, rng.uniform(0, 2 * np.pi), size)
            hard = alpha >= 128
            kept = np.bincount(owner[~hard & (owner >= 0)], minlength=len(areas))
            if hard.any() and all(kept[j] >= 0.6 * areas[j] for j in range(len(areas))):
                break
        else:
            continue
        _paint(image, alpha, _jittered_rgb(rng, color), pattern, center, radius, rng)
        label[hard], owner[hard] = k, len(areas)
        areas.append(int(hard.sum()))
        drawn.append(int(k))
    noisy = image * 255.0 + rng.normal(0.0, rng.uniform(2, 8), image.shape).astype(np.float32)
    return noisy.clip(0, 255).round().astype(np.uint8), label, drawn


def make_caption(class_ids: Sequence[int]) -> str:
    """Caption naming each class once with its count, in order of appearance: 'a plain red shape and
    two dotted blue shapes'."""
    counts: Dict[int, int] = {}
    for k in class_ids:
        counts[int(k)] = counts.get(int(k), 0) + 1
    parts = [f"{_NUMBER_WORDS[n - 1]} {CLASS_NAMES[k]}{'s' if n > 1 else ''}"
             for k, n in counts.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def sample_object_image(rng: np.random.Generator, class_index: int, size: int = 64,
                        ) -> Tuple[np.ndarray, np.ndarray, str]:
    """One large object of ``class_index`` on a textured background, for contrastive pretraining.

    Returns (image size×size×3 uint8 RGB, label size×size uint8, caption such as 'a plain red
    shape').
    """
    if not 0 <= class_index < len(CLASS_NAMES):
        raise ValueError(f"class_index {class_index} out of range 0..{len(CLASS_NAMES) - 1}")
    image, label, _ = render_scene(rng, [class_index], size, radius_range=(0.25, 0.4))
    return image, label, make_caption([class_index])
