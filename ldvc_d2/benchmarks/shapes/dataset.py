"""``shapes_zs``: a synthetic compositional zero-shot segmentation world (the default dataset):
its files, their generation and their registration with detectron2.

The world itself (16 colour × surface-pattern classes, 12 seen / 4 unseen, and how a scene is drawn)
is :mod:`.world`; its public names are re-exported here.

Images are small RGB scenes (default 128×128) of 1–4 anti-aliased, rotated, possibly overlapping
objects on a muted (unsaturated) textured background, with colour jitter, shading and pixel noise.
Labels are single-channel index PNGs: class index 0..15, 255 = background (ignored, like VOC
background). ``index.json`` holds one caption per image ("a striped red shape and two dotted blue
shapes") for pretraining a tiny CLIP on the same world; :func:`sample_object_image` draws
single-object image/caption pairs on the fly for the same purpose.

Registered sets (metadata as in :mod:`ldvc_d2.data.datasets.zero_shot_sem_seg`; dataset dicts hold
*full* labels):

* ``shapes_zs_train_seen``: train split; 12 seen / 4 unseen; zero-shot training
* ``shapes_zs_val``: val split; 12 seen / 4 unseen; zero-shot evaluation
* ``shapes_full_train``: train split; all seen / none; fully supervised upper bound

Layout (under ``$DETECTRON2_DATASETS``, generated on first use by :func:`generate_shapes_dataset`)::

    shapes_zs/images/{train,val}/000000.png   RGB uint8
    shapes_zs/labels/{train,val}/000000.png   L uint8, 0..15 or 255
    shapes_zs/index.json                       generation parameters (the completeness marker),
                                               classes, split, and per-image records with captions
"""
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from tqdm import tqdm

from .world import (
    CLASS_NAMES, COLOR_RGB, COLORS, GENERATOR_VERSION, IGNORE_LABEL, OUTLINES, PATTERNS, SEEN_CLASSES,
    STUFF_COLORS, UNSEEN_CLASSES, make_caption, render_scene, sample_object_image,
)

__all__ = [
    "COLORS", "PATTERNS", "OUTLINES", "COLOR_RGB", "CLASS_NAMES", "SEEN_CLASSES", "UNSEEN_CLASSES",
    "STUFF_COLORS", "make_caption", "render_scene", "sample_object_image",
    "generate_shapes_dataset", "load_shapes_split", "register_shapes",
]

logger = logging.getLogger(__name__)

DATASET_DIRNAME = "shapes_zs"
_SPLITS = ("train", "val")


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
