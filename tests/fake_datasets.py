"""Small fake dataset trees in the layouts ``datasets/README.md`` describes, for the tests of the
``datasets/prepare_*.py`` scripts and the end-to-end benchmark runs.

Label values follow the dataset specifications (stated here, not taken from the scripts' tables):
VOC palette PNGs hold VOC ids 0 (background) .. 20 and 255 (boundary); SBD ``cls/*.mat`` files hold
``GTcls.Segmentation`` with ids 0..20; COCO-Stuff ``stuffthingmaps`` hold 0-based ids 0..181 without
the 11 unused thing ids, and 255 (unlabeled); PASCAL-Context ``trainval/*.mat`` files hold
``LabelMap`` with ids 0 (unlabelled) .. 459 of ``labels.txt``; an ADE20K 2021 ``*_seg.png`` encodes
the object class of a pixel as ``R // 10 * 256 + G`` (B is the instance); Cityscapes
``*_gtFine_labelIds.png`` hold labelIds 0..33. Every generator returns
the raw label arrays it wrote, so that a test can compute the expected prepared labels itself.
"""
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import scipy.io
from PIL import Image

__all__ = [
    "COCO_UNUSED_1BASED", "VOC_TRAIN", "VOC_VAL", "SBD_TRAIN", "SBD_VAL", "VOC_EXTRA",
    "coco_used_ids", "coco_contiguous", "make_ade_full_tree", "make_cityscapes_tree", "make_coco_stuff_tree",
    "make_context_full_tree", "make_voc_tree", "voc_expected", "write_image", "write_lines",
    "write_png",
]

# COCO's 1-based ids that name no class (the spec's statement, independent of the scripts).
COCO_UNUSED_1BASED = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)

# The default VOC tree: SBD val holds a VOC train id and SBD train a VOC val id (overlaps the
# preparation must resolve), and VOC_EXTRA is an image in no list.
VOC_TRAIN, VOC_VAL = ["2007_000001", "2007_000002"], ["2007_000003", "2007_000004"]
SBD_TRAIN, SBD_VAL = ["2008_000010", "2007_000003"], ["2008_000011", "2007_000001"]
VOC_EXTRA = ["2009_999999"]

# Pixel values of the raw label files.
VOC_IDS = np.r_[0:21, 255]  # VOC palette PNG: ids 0..20, boundary 255
SBD_IDS = np.arange(21)  # SBD: no boundary label


def write_image(path: str, h: int, w: int, color: Tuple[int, int, int] = (90, 120, 150)) -> None:
    """A plain ``w`` x ``h`` RGB JPEG at ``path`` (folders created)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (w, h), color).save(path, format="JPEG")


def write_png(path: str, array: np.ndarray, palette: bool = False, dtype: type = np.uint8) -> None:
    """``array`` as a single-channel ``dtype`` (uint8 or uint16: 16-bit) PNG; ``palette``: a
    VOC-style "P" PNG (pixel = index)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(np.asarray(array).astype(dtype))
    if palette:
        image.putpalette([(i * 37) % 256 for i in range(768)])
        assert image.mode == "P"
    image.save(path)


def write_lines(path: str, ids: Sequence[str]) -> None:
    """A split list: one id per line."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(i + "\n" for i in ids))


def _stamp(label: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Write ``values`` into the first pixels (row-major) of ``label``, so that each one occurs."""
    flat = label.reshape(-1)
    assert len(values) <= flat.size, "label too small for the stamped values"
    flat[: len(values)] = values
    return label


# ---------------------------------------------------------------------------------------------- VOC
def make_voc_tree(
    root: str,
    seed: int = 0,
    *,
    voc_train: Sequence[str] = VOC_TRAIN,
    voc_val: Sequence[str] = VOC_VAL,
    sbd_train: Sequence[str] = SBD_TRAIN,
    sbd_val: Sequence[str] = SBD_VAL,
    extra: Sequence[str] = VOC_EXTRA,
    size: Optional[Tuple[int, int]] = None,
    all_ids: bool = False,
) -> Dict[str, np.ndarray]:
    """VOC 2012 (palette PNGs, split lists) + SBD (``GTcls`` .mat files, split lists) under ``root``.

    Images are ``size`` (h, w), or small and varying (5-7 x 7-10) when None. VOC labels draw from
    ids 0..20 and 255, SBD labels from 0..20; ``all_ids`` stamps every such id into each label.
    An id in both VOC and SBD gets both files (VOC's PNG must win). Returns id -> the raw map the
    prepared label must come from (VOC's if present, else SBD's).
    """
    rng = np.random.default_rng(seed)
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    sbd = os.path.join(root, "VOCdevkit", "VOCaug", "dataset")
    raw: Dict[str, np.ndarray] = {}
    for k, i in enumerate(list(voc_train) + list(voc_val) + list(sbd_train) + list(sbd_val)
                          + list(extra)):
        jpg = os.path.join(voc, "JPEGImages", i + ".jpg")
        if not os.path.exists(jpg):
            write_image(jpg, *(size or (5 + k % 3, 7 + k % 4)))
        shape = Image.open(jpg).size[::-1]
        if i in voc_train or i in voc_val:
            raw[i] = rng.choice(VOC_IDS, size=shape)
            if all_ids:
                _stamp(raw[i], VOC_IDS)
            write_png(os.path.join(voc, "SegmentationClass", i + ".png"), raw[i], palette=True)
        if i in sbd_train or i in sbd_val:
            seg = rng.integers(0, 21, size=shape).astype(np.uint8)
            if all_ids:
                _stamp(seg, SBD_IDS)
            os.makedirs(os.path.join(sbd, "cls"), exist_ok=True)
            scipy.io.savemat(os.path.join(sbd, "cls", i + ".mat"), {"GTcls": {
                "Segmentation": seg, "CategoriesPresent": np.unique(seg[seg > 0])}})
            raw.setdefault(i, seg)
    write_lines(os.path.join(voc, "ImageSets", "Segmentation", "train.txt"), voc_train)
    write_lines(os.path.join(voc, "ImageSets", "Segmentation", "val.txt"), voc_val)
    write_lines(os.path.join(sbd, "train.txt"), sbd_train)
    write_lines(os.path.join(sbd, "val.txt"), sbd_val)
    return raw


def voc_expected(raw: np.ndarray) -> np.ndarray:
    """The 20-class protocol: VOC id 1..20 -> 0..19, background 0 and boundary 255 -> 255."""
    return np.where((raw == 0) | (raw == 255), 255, raw.astype(int) - 1)


# --------------------------------------------------------------------------------------- COCO-Stuff
def coco_used_ids() -> np.ndarray:
    """The 171 0-based stuffthingmaps ids that name a class, ascending."""
    return np.array([i for i in range(182) if i + 1 not in COCO_UNUSED_1BASED])


def coco_contiguous(ids: np.ndarray) -> np.ndarray:
    """0-based stuffthingmaps id -> contiguous index: the id minus the unused ids below it."""
    ids = np.asarray(ids)
    unused0 = np.array(COCO_UNUSED_1BASED) - 1
    below = (unused0[None, :] < ids.reshape(-1, 1)).sum(1).reshape(ids.shape)
    return np.where(ids == 255, 255, ids - below)


def make_coco_stuff_tree(
    root: str,
    splits: Dict[str, Sequence[str]],
    seed: int = 1,
    *,
    size: Optional[Tuple[int, int]] = None,
    stamp: Sequence[int] = (20, 91, 181),
    unlabeled_images: Optional[Dict[str, Sequence[str]]] = None,
) -> Dict[str, np.ndarray]:
    """COCO 2017 images + ``stuffthingmaps_trainval2017`` labels under ``root/coco``.

    ``splits``: split ("train2017", "val2017") -> image names. Labels draw from the 171 used ids and
    255, and start (row-major) with ``stamp`` (default: cow, banner, wood, i.e. ids across the gaps).
    Images are ``size`` (h, w), or (6 + k) x 9 for the k-th image of a split when None.
    ``unlabeled_images``: split -> names of images written without a label. Returns name -> raw map.
    """
    rng, coco = np.random.default_rng(seed), os.path.join(root, "coco")
    values = np.r_[coco_used_ids(), 255]
    raw: Dict[str, np.ndarray] = {}
    for split, names in splits.items():
        for k, name in enumerate(names):
            h, w = size or (6 + k, 9)
            raw[name] = _stamp(rng.choice(values, size=(h, w)), stamp)
            write_png(os.path.join(coco, "stuffthingmaps_trainval2017", split, f"{name}.png"),
                      raw[name])
            write_image(os.path.join(coco, split, f"{name}.jpg"), h, w)
    for split, names in (unlabeled_images or {}).items():
        for name in names:
            write_image(os.path.join(coco, split, f"{name}.jpg"), 4, 4)
    return raw


# --------------------------------------------------------------------------- PASCAL Context (full)
def make_context_full_tree(
    root: str, val_ids: Sequence[str], names: Sequence[str], seed: int = 4,
    stamp: Sequence[int] = (0, 1, 256, 459),
) -> Dict[str, np.ndarray]:
    """PASCAL Context 2010 under ``root``: ``labels.txt`` naming ids 1..459 ``names`` in order,
    ``trainval/<id>.mat`` LabelMaps (uint16, ids 0..459, starting with ``stamp``), images, and
    ``ImageSets/SegmentationContext/val.txt``. Image k is (5 + k) x 7. Returns id -> LabelMap."""
    assert len(names) == 459
    rng, ctx = np.random.default_rng(seed), os.path.join(root, "VOCdevkit", "VOC2010")
    os.makedirs(os.path.join(ctx, "trainval"), exist_ok=True)
    with open(os.path.join(ctx, "labels.txt"), "w") as f:
        f.write("".join(f"{i}: {n}\n" for i, n in enumerate(names, 1)))
    raw: Dict[str, np.ndarray] = {}
    for k, i in enumerate(val_ids):
        raw[i] = _stamp(rng.integers(0, 460, size=(5 + k, 7)).astype(np.uint16), stamp)
        scipy.io.savemat(os.path.join(ctx, "trainval", i + ".mat"), {"LabelMap": raw[i]})
        write_image(os.path.join(ctx, "JPEGImages", i + ".jpg"), 5 + k, 7)
    write_lines(os.path.join(ctx, "ImageSets", "SegmentationContext", "val.txt"), val_ids)
    return raw


# ------------------------------------------------------------------------------- ADE20K 2021 (full)
def make_ade_full_tree(
    root: str, sizes: Dict[str, Tuple[int, int]], values: Sequence[int], seed: int = 5,
) -> Dict[str, np.ndarray]:
    """ADE20K 2021 validation images under ``root/ADE20K_2021_17_01/images/ADE/validation/<scene>/``
    (two scene folders) with their ``*_seg.png``: ``sizes`` maps an image name (``ADE_val_...``) to
    (h, w); object classes are drawn from ``values`` (which all occur in the first image when it is
    large enough). Returns name -> class map (int)."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "ADE20K_2021_17_01", "images", "ADE", "validation")
    raw: Dict[str, np.ndarray] = {}
    for k, (name, (h, w)) in enumerate(sizes.items()):
        folder = os.path.join(base, f"scene{k % 2}", "sub")
        classes = rng.choice(np.asarray(values), size=(h, w))
        raw[name] = _stamp(classes, values) if h * w >= len(values) else classes
        seg = np.stack([raw[name] // 256 * 10 + rng.integers(0, 10, size=(h, w)),  # R: class // 256
                        raw[name] % 256, rng.integers(0, 256, size=(h, w))], axis=-1)
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(seg.astype(np.uint8), "RGB").save(os.path.join(folder, f"{name}_seg.png"))
        write_image(os.path.join(folder, f"{name}.jpg"), h, w)
    return raw


# --------------------------------------------------------------------------------------- Cityscapes
def make_cityscapes_tree(
    root: str, splits: Dict[str, Dict[str, Sequence[str]]], seed: int = 7,
    size: Tuple[int, int] = (6, 8),
) -> Dict[str, np.ndarray]:
    """Cityscapes under ``root/cityscapes``: ``splits`` maps a split ("val", "train") to
    {city: [stems]} (``<city>_<seq>_<frame>``); each stem gets ``leftImg8bit/<split>/<city>/
    <stem>_leftImg8bit.png`` (``size`` h, w) and ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``
    with labelIds drawn from 0..33, the first label of each split holding all 34. Returns stem ->
    labelIds map."""
    rng, base = np.random.default_rng(seed), os.path.join(root, "cityscapes")
    raw: Dict[str, np.ndarray] = {}
    for split, cities in splits.items():
        first = True
        for city, stems in cities.items():
            for stem in stems:
                raw[stem] = rng.integers(0, 34, size=size)
                if first:
                    _stamp(raw[stem], range(34))
                    first = False
                write_png(os.path.join(base, "gtFine", split, city, f"{stem}_gtFine_labelIds.png"), raw[stem])
                path = os.path.join(base, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.new("RGB", size[::-1], (70, 130, 180)).save(path)
    return raw
