"""Shared registration for the zero-shot semantic-segmentation benchmarks.

Every registered set (train or eval) carries the same metadata, which the model, mapper and
evaluator read; the data pipeline always emits *full* labels and the model derives the seen-only
training view from the metadata:

* ``stuff_classes``: all class names of the benchmark, in label order;
* ``seen_classes`` / ``unseen_classes``: sorted lists of indices into ``stuff_classes``
  (fully supervised sets: all seen, none unseen; cross-dataset sets: none seen, all unseen);
* ``ignore_label``: 255, or 65535 for the 16-bit sets (Context-459, ADE-full);
  ``evaluator_type`` = ``"zero_shot_sem_seg"``;
* ``stuff_colors``: one RGB triple per class (VOC palette order);
* ``image_root`` / ``sem_seg_root``: the image folder and the prepared index-PNG label folder;
* ``prepare_command``: the command that prepares the labels (benchmarks only, not folder datasets);
* ``prompt_class_names``: one name per class, the words a paper's text encoder was given (e.g. VOC
  "tv" for "tvmonitor" in CLIPtrase's code); equal to ``stuff_classes`` unless a benchmark says
  otherwise. ``stuff_classes`` stay the dataset's names (results tables, per-class IoU keys);
* only where a class stands for "background": ``background_class`` (its index) and
  ``background_names`` (the words whose text embeddings together stand for it);
* only on the centre-crop variants ``<name>_crop<n>``: ``center_crop`` = n;
* only on sets scored as another code scores them (CLIPtrase's official variants ``*_official``):
  ``gt_label_map`` (dict stored label -> scored label, applied by the evaluator before counting)
  and ``no_object_labels`` (the stored labels that are not an object, for the evaluator's
  ``TEST.SKIP_NO_OBJECT_IMAGES``; default there: ``background_class`` and ``ignore_label``).

Dataset dicts are ``{"file_name", "sem_seg_file_name", "image_id"}`` (no height/width: reading 118k
image headers at start-up is slow, and detectron2 falls back to the decoded image size), one per
prepared label file, sorted by ``image_id`` (the file stem).

Inductive training keeps every image of the training split: images that contain unseen objects, and
also images whose label becomes all-ignore (255) once unseen pixels are removed, as ZegCLIP does.
Filtering, if any, is the mapper's or model's business, not the dataset's.

Unmatched files are never dropped silently. A label file without its image is an error; for
splits whose image folder holds exactly that split (COCO-Stuff, ADE20K) an image without a label is
one too. Set the environment variable ``LDVC_UNMATCHED_FILES=warn`` (read when the dataset is
loaded) to log a warning with the counts and the first names instead, and keep the matched pairs.
"""
import dataclasses
import functools
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.palette import class_colors
from .builtin_classes import seen_indices

__all__ = [
    "CENTER_CROP_SIZES", "ZeroShotSplit", "center_crop_variant", "datasets_root", "load_zero_shot_sem_seg",
    "register_zero_shot_splits", "set_zero_shot_metadata",
]

logger = logging.getLogger(__name__)

UNMATCHED_ENV = "LDVC_UNMATCHED_FILES"
CENTER_CROP_SIZES = (224, 336)  # CLIPtrase's centre-crop protocol (SEED_SYSTEMS 2.2)
_SHOW = 5  # how many unmatched names an error or warning lists


@dataclass(frozen=True)
class ZeroShotSplit:
    """One registered dataset: where its files are (relative to the datasets root) and its split.

    ``images_need_labels``: the image folder holds exactly this split, so an image without a label
    is an error (False where the folder is shared by several splits, e.g. VOC's JPEGImages).
    ``expected_count``: the number of images of the full dataset; a different count is logged.
    ``recursive_images``: images lie in subfolders of ``image_dir`` (Cityscapes: one per city),
    found by walking it; their stems must be unique. Labels are always one flat folder.
    The other fields are the optional metadata of the module docstring (``ignore_label`` 255 unless
    the labels are 16-bit; ``prompt_class_names`` None = ``classes``; ``gt_label_map`` as
    (stored, scored) pairs, () = none).
    """

    name: str
    image_dir: str
    label_dir: str
    classes: Sequence[str]
    unseen: Sequence[int]
    prepare_command: str
    expected_count: int
    image_ext: str = ".jpg"
    images_need_labels: bool = False
    ignore_label: int = 255
    prompt_class_names: Optional[Sequence[str]] = None
    background_class: Optional[int] = None
    background_names: Sequence[str] = ()
    center_crop: Optional[int] = None
    gt_label_map: Tuple[Tuple[int, int], ...] = ()
    no_object_labels: Optional[Tuple[int, ...]] = None
    recursive_images: bool = False


def center_crop_variant(split: ZeroShotSplit, size: int) -> ZeroShotSplit:
    """``split`` centre-cropped to ``size`` x ``size``: ``<name>_crop<size>``, read from the copies
    under ``crop<size>/`` that ``<prepare command> --center-crop <size>`` writes (lossless PNG
    images; short side resized to ``size``, bicubic for images, nearest for labels)."""
    return dataclasses.replace(
        split, name=f"{split.name}_crop{size}", image_dir=f"crop{size}/{split.image_dir}",
        label_dir=f"crop{size}/{split.label_dir}", image_ext=".png",
        prepare_command=f"{split.prepare_command} --center-crop {size}", center_crop=size)


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS``, default ``"datasets"`` (relative to the working directory)."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def _stems(folder: str, ext: str) -> Dict[str, str]:
    """Map file stem -> file name for the non-hidden files of ``folder`` ending in ``ext``."""
    with os.scandir(folder) as entries:
        return {e.name[: -len(ext)]: e.name for e in entries
                if e.name.endswith(ext) and not e.name.startswith(".")}


def _stems_recursive(folder: str, ext: str) -> Dict[str, str]:
    """Map file stem -> path relative to ``folder`` for the non-hidden files ending in ``ext`` in
    ``folder`` and its subfolders; a stem found twice is an error naming both files."""
    found: Dict[str, str] = {}
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(ext) and not name.startswith("."):
                stem, rel = name[: -len(ext)], os.path.relpath(os.path.join(current, name), folder)
                if stem in found:
                    raise FileNotFoundError(f"'{folder}' holds two images with the stem '{stem}': "
                                            f"'{found[stem]}' and '{rel}'; image stems must be unique.")
                found[stem] = rel
    return found


def _unmatched_message(name: str, kind: str, folder: str, stems: List[str], ext: str) -> str:
    shown = ", ".join(s + ext for s in stems[:_SHOW]) + (", ..." if len(stems) > _SHOW else "")
    return f"dataset '{name}': {len(stems)} {kind} missing from '{folder}' (first: {shown})"


def load_zero_shot_sem_seg(
    name: str,
    image_root: str,
    sem_seg_root: str,
    *,
    prepare_command: str,
    image_ext: str = ".jpg",
    images_need_labels: bool = False,
    expected_count: Optional[int] = None,
    recursive_images: bool = False,
) -> List[dict]:
    """Pair the prepared label PNGs of ``sem_seg_root`` with the images of ``image_root`` (and of
    its subfolders with ``recursive_images``).

    Raises ``FileNotFoundError`` naming the folder (and, for labels, the prepare command) when a
    folder is missing or holds no labels, and on unmatched files (see the module docstring).
    """
    if not os.path.isdir(sem_seg_root):
        raise FileNotFoundError(
            f"dataset '{name}': prepared label folder '{sem_seg_root}' does not exist. "
            f"Run `{prepare_command}` (it reads $DETECTRON2_DATASETS, or pass --root) to build it; "
            "see datasets/README.md.")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"dataset '{name}': image folder '{image_root}' does not exist. Download the dataset "
            f"into $DETECTRON2_DATASETS as described in datasets/README.md, then run `{prepare_command}`.")
    labels = _stems(sem_seg_root, ".png")
    if not labels:
        raise FileNotFoundError(
            f"dataset '{name}': prepared label folder '{sem_seg_root}' holds no .png files. "
            f"Run `{prepare_command}` to build it.")
    images = (_stems_recursive if recursive_images else _stems)(image_root, image_ext)

    problems = []
    no_image = sorted(set(labels) - set(images))
    if no_image:
        problems.append(_unmatched_message(name, "images (labels present)", image_root,
                                           no_image, image_ext))
    no_label = sorted(set(images) - set(labels)) if images_need_labels else []
    if no_label:
        problems.append(_unmatched_message(name, "labels (images present)", sem_seg_root,
                                           no_label, ".png"))
    if problems:
        text = "; ".join(problems)
        if os.environ.get(UNMATCHED_ENV, "error").lower() != "warn":
            raise FileNotFoundError(
                f"{text}. Re-run `{prepare_command}`, or set {UNMATCHED_ENV}=warn to skip them.")
        logger.warning("%s. Keeping only the matched pairs (%s=warn).", text, UNMATCHED_ENV)

    stems = sorted(set(labels) & set(images))
    if expected_count is not None and len(stems) != expected_count:
        logger.warning("dataset '%s': %d images, the full dataset has %d. If preparation was "
                       "interrupted, re-run `%s`.", name, len(stems), expected_count,
                       prepare_command)
    return [
        {
            "file_name": os.path.join(image_root, images[s]),
            "sem_seg_file_name": os.path.join(sem_seg_root, labels[s]),
            "image_id": s,
        }
        for s in stems
    ]


def register_zero_shot_splits(
    splits: Sequence[ZeroShotSplit], root: Optional[str] = None, prefix: str = ""
) -> List[str]:
    """Register ``splits`` under ``root`` (default :func:`datasets_root`, read now) as
    ``prefix + split.name``; returns the registered names. Touches no file: a missing dataset only
    fails when ``DatasetCatalog.get`` is called."""
    root = datasets_root() if root is None else root
    names = []
    for split in splits:
        name = prefix + split.name
        image_root = os.path.join(root, split.image_dir)
        sem_seg_root = os.path.join(root, split.label_dir)
        DatasetCatalog.register(name, functools.partial(
            load_zero_shot_sem_seg, name, image_root, sem_seg_root,
            prepare_command=split.prepare_command, image_ext=split.image_ext,
            images_need_labels=split.images_need_labels, expected_count=split.expected_count,
            recursive_images=split.recursive_images))
        set_zero_shot_metadata(
            name, split.classes, split.unseen, image_root, sem_seg_root, split.ignore_label,
            prompt_class_names=split.prompt_class_names, background_class=split.background_class,
            background_names=split.background_names, center_crop=split.center_crop,
            gt_label_map=dict(split.gt_label_map) or None, no_object_labels=split.no_object_labels)
        MetadataCatalog.get(name).set(prepare_command=split.prepare_command)
        names.append(name)
    return names


def set_zero_shot_metadata(
    name: str, classes: Sequence[str], unseen: Sequence[int], image_root: str, sem_seg_root: str,
    ignore_label: int = 255,
    *,
    prompt_class_names: Optional[Sequence[str]] = None,
    background_class: Optional[int] = None,
    background_names: Sequence[str] = (),
    center_crop: Optional[int] = None,
    gt_label_map: Optional[Dict[int, int]] = None,
    no_object_labels: Optional[Sequence[int]] = None,
) -> None:
    """Set the metadata every zero-shot set carries (module docstring) on ``MetadataCatalog.get(name)``;
    the optional keys only when given."""
    prompt = list(classes if prompt_class_names is None else prompt_class_names)
    if len(prompt) != len(classes):
        raise ValueError(f"dataset '{name}': {len(prompt)} prompt_class_names for {len(classes)} classes")
    optional = {"background_class": background_class, "center_crop": center_crop,
                "gt_label_map": gt_label_map,
                "no_object_labels": None if no_object_labels is None else list(no_object_labels)}
    if background_class is not None:
        optional["background_names"] = list(background_names or [classes[background_class]])
    MetadataCatalog.get(name).set(
        prompt_class_names=prompt,
        **{k: v for k, v in optional.items() if v is not None},
        stuff_classes=list(classes),
        seen_classes=seen_indices(len(classes), unseen),
        unseen_classes=sorted(unseen),
        stuff_colors=[list(c) for c in class_colors(len(classes))],
        ignore_label=ignore_label,
        evaluator_type="zero_shot_sem_seg",
        image_root=image_root,
        sem_seg_root=sem_seg_root,
    )
