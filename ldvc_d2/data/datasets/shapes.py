"""``shapes_zs``: a synthetic compositional zero-shot segmentation world (the default dataset).

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
Labels are single-channel index PNGs: class index 0..15, 255 = background (ignored, like VOC
background). ``index.json`` holds one caption per image ("a striped red shape and two dotted blue
shapes") for pretraining a tiny CLIP on the same world; :func:`sample_object_image` draws
single-object image/caption pairs on the fly for the same purpose.

Registered sets (metadata as in :mod:`.zero_shot_sem_seg`; dataset dicts hold *full* labels):

* ``shapes_zs_train_seen``: train split; 12 seen / 4 unseen; zero-shot training
* ``shapes_zs_val``: val split; 12 seen / 4 unseen; zero-shot evaluation
* ``shapes_full_train``: train split; all seen / none; fully supervised upper bound

Layout (under ``$DETECTRON2_DATASETS``, generated on first use by :func:`generate_shapes_dataset`)::

    shapes_zs/images/{train,val}/000000.png   RGB uint8
    shapes_zs/labels/{train,val}/000000.png   L uint8, 0..15 or 255
    shapes_zs/index.json                       generation parameters (the completeness marker),
                                               classes, split, and per-image records with captions
"""
import colorsys
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from tqdm import tqdm

__all__ = [
    "COLORS", "PATTERNS", "OUTLINES", "COLOR_RGB", "CLASS_NAMES", "SEEN_CLASSES", "UNSEEN_CLASSES",
    "STUFF_COLORS", "make_caption", "render_scene", "sample_object_image",
    "generate_shapes_dataset", "load_shapes_split", "register_shapes",
]

logger = logging.getLogger(__name__)

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

DATASET_DIRNAME = "shapes_zs"
IGNORE_LABEL = 255
GENERATOR_VERSION = 2  # bump whenever the drawing code changes: existing datasets are regenerated
_SPLITS = ("train", "val")
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


def _params(seed: int, num_train: int, num_val: int, image_size: int) -> Dict[str, int]:
    return {"version": GENERATOR_VERSION, "seed": seed, "num_train": num_train, "num_val": num_val,
            "image_size": image_size}


def _incomplete_reason(target: Path, params: Dict[str, int]) -> Optional[str]:
    """Why ``target`` is not a complete dataset generated with ``params`` (None if it is)."""
    index_path = target / "index.json"
    if not index_path.is_file():
        return f"{index_path} does not exist"
    index = json.loads(index_path.read_text())
    if index.get("params") != params:
        return f"{index_path} was generated with {index.get('params')}, requested {params}"
    for split in _SPLITS:
        for rec in index["splits"][split]:
            for key in ("file_name", "sem_seg_file_name"):
                if not (target / rec[key]).is_file():
                    return f"{target / rec[key]} listed in {index_path} is missing"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, OverflowError):
        return False
    return True


def _remove_leftovers(root: Path) -> None:
    """Delete temp/old directories of generator runs that were killed (their process is gone)."""
    for path in root.glob(f".{DATASET_DIRNAME}.*-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and (not pid.isdigit() or not _pid_alive(int(pid))):
            logger.info(f"Removing {path}, left over from an interrupted shapes_zs generation.")
            shutil.rmtree(path, ignore_errors=True)


def _write_split(out: Path, split: int, name: str, num: int, params: Dict[str, int],
                 bar: tqdm) -> List[dict]:
    """Render and write one split; returns its index records."""
    split_rng = np.random.default_rng([params["seed"], split])
    counts = split_rng.integers(1, 5, size=num)
    # A stream of shuffled rounds of all classes keeps classes balanced: each one appears ~equally.
    rounds = -(-int(counts.sum()) // len(CLASS_NAMES))
    stream = np.concatenate([split_rng.permutation(len(CLASS_NAMES)) for _ in range(rounds)])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    (out / "images" / name).mkdir(parents=True)
    (out / "labels" / name).mkdir(parents=True)
    records = []
    for i in range(num):
        rng = np.random.default_rng([params["seed"], split, i])
        classes = stream[offsets[i]:offsets[i + 1]]
        image, label, drawn = render_scene(rng, classes, params["image_size"])
        rec = {"image_id": f"{name}_{i:06d}", "file_name": f"images/{name}/{i:06d}.png",
               "sem_seg_file_name": f"labels/{name}/{i:06d}.png", "caption": make_caption(drawn),
               "objects": drawn}
        # Fast compression: noisy images barely compress anyway; this halves generation time.
        Image.fromarray(image, "RGB").save(out / rec["file_name"], compress_level=1)
        Image.fromarray(label, "L").save(out / rec["sem_seg_file_name"], compress_level=1)
        records.append(rec)
        bar.update()
    return records


def generate_shapes_dataset(root: Union[str, os.PathLike], *, seed: int = 0,
                            num_train: int = 400, num_val: int = 100, image_size: int = 128,
                            overwrite: bool = False) -> Path:
    """Generate ``root/shapes_zs`` (deterministic in ``seed``) unless a complete copy with the same
    parameters exists; returns the dataset directory.

    Writes into ``root/.shapes_zs.tmp-<pid>`` and renames it into place at the end, so a killed run
    never leaves a half-written dataset; ``index.json`` (written last) records the parameters and is
    the completeness marker. Leftovers of killed runs are deleted. Safe against a concurrent run
    (e.g. one per GPU): whichever renames first wins, the other discards its copy.
    """
    root = Path(root)
    target = root / DATASET_DIRNAME
    params = _params(seed, num_train, num_val, image_size)
    reason = "overwrite=True" if overwrite else _incomplete_reason(target, params)
    if reason is None:
        return target
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    logger.info(f"Generating the shapes_zs dataset in {target} ({reason}).")
    tmp = root / f".{DATASET_DIRNAME}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with tqdm(total=num_train + num_val, desc="Generating shapes_zs", unit="img") as bar:
            splits = {name: _write_split(tmp, s, name, num, params, bar)
                      for s, (name, num) in enumerate(zip(_SPLITS, (num_train, num_val)))}
        index = {"params": params, "classes": list(CLASS_NAMES), "colors": list(COLORS),
                 "patterns": list(PATTERNS), "seen_classes": SEEN_CLASSES,
                 "unseen_classes": UNSEEN_CLASSES, "ignore_label": IGNORE_LABEL, "splits": splits}
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
    except BaseException:  # e.g. Ctrl-C; a hard kill leaves tmp for _remove_leftovers
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        if not overwrite and _incomplete_reason(target, params) is None:
            shutil.rmtree(tmp)  # a concurrent run finished first
            return target
        old = root / f".{DATASET_DIRNAME}.old-{os.getpid()}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(tmp, target)
        except OSError:
            if _incomplete_reason(target, params) is not None:
                raise
            shutil.rmtree(tmp)
    return target


def load_shapes_split(root: Union[str, os.PathLike], split: str) -> List[dict]:
    """Detectron2 dataset dicts of ``split`` ('train' or 'val'); generates the data if needed.

    Labels are the full 16-class labels; the seen-only training view is derived by the model/mapper.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown shapes_zs split {split!r}; expected one of {_SPLITS}")
    target = generate_shapes_dataset(root)
    index = json.loads((target / "index.json").read_text())
    size = index["params"]["image_size"]
    return [{"file_name": str(target / r["file_name"]),
             "sem_seg_file_name": str(target / r["sem_seg_file_name"]),
             "height": size, "width": size, "image_id": r["image_id"]}
            for r in index["splits"][split]]


def register_shapes(root: Optional[Union[str, os.PathLike]] = None,
                    prefix: str = "") -> List[str]:
    """Register the three shapes sets as ``prefix + name``; returns the names registered now.

    ``root`` defaults to ``$DETECTRON2_DATASETS`` (else ``datasets``), read when a set is loaded, so
    nothing is generated until ``DatasetCatalog.get``. Names already registered are skipped, so
    importing twice is harmless (to register another root, pass another ``prefix``).
    """
    all_classes = list(range(len(CLASS_NAMES)))
    datasets = {
        "shapes_zs_train_seen": ("train", SEEN_CLASSES, UNSEEN_CLASSES),
        "shapes_zs_val": ("val", SEEN_CLASSES, UNSEEN_CLASSES),
        "shapes_full_train": ("train", all_classes, []),
    }
    names = []
    for base, (split, seen, unseen) in datasets.items():
        name = prefix + base
        if name in DatasetCatalog.list():
            continue

        def load(split: str = split) -> List[dict]:
            data_root = os.environ.get("DETECTRON2_DATASETS", "datasets") if root is None else root
            return load_shapes_split(data_root, split)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            stuff_classes=list(CLASS_NAMES), seen_classes=list(seen), unseen_classes=list(unseen),
            stuff_colors=[list(c) for c in STUFF_COLORS], ignore_label=IGNORE_LABEL,
            evaluator_type="zero_shot_sem_seg")
        names.append(name)
    return names


register_shapes()
