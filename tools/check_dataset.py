#!/usr/bin/env python
"""Check a semantic-segmentation dataset before training on it, and print its class pixel counts.

    python tools/check_dataset.py --dataset mydata_train --register my_datasets.py
    python tools/check_dataset.py --image-root data/mydata/images/train --label-root data/mydata/labels/train \\
        --classes "road,car,tree,person,sky" --unseen "car,tree"

For every image/label pair (paired by file stem, as training pairs them) it checks that the label
is readable, single-channel (index PNG: mode L, P, or 16-bit I;16 / I for more than 255 classes),
the size of its image (after the image's EXIF rotation, as training reads it), and that its values
are class indices 0..C-1 or the ignore label; the image must be readable too. Unmatched files (a
label without image, an image without label) are problems as well. A registered set's
``gt_label_map`` (stored -> scored label) is applied before checking and counting, as the evaluator
applies it. It prints a table of pixels and images per class and every problem with the file it
concerns, and exits with status 1 when there is any problem (0 otherwise).
"""
import argparse
import os
import sys
from multiprocessing import Pool
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tabulate import tabulate
from tqdm import tqdm

import ldvc_d2  # noqa: F401  (first: detectron2 0.6 shims, registrations)
from detectron2.data import DatasetCatalog, MetadataCatalog
from ldvc_d2.data import add_register_argument, load_user_modules, register_zero_shot_folder
from ldvc_d2.data.datasets.zero_shot_sem_seg import UNMATCHED_ENV
from ldvc_d2.predictor import parse_class_list, read_vocabulary_file
from ldvc_d2.utils import write_json_atomic

_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees
_SHOW_VALUES = 5


def _image_size(path: str) -> Tuple[int, int]:
    """(height, width) of an image as detectron2's read_image returns it (EXIF orientation applied).
    The image is decoded, as training decodes it: a truncated file fails here, not mid-training."""
    with Image.open(path) as im:
        im.load()
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (w, h) if orientation in _SWAPPING_ORIENTATIONS else (h, w)


def _apply_label_map(label: np.ndarray, label_map: Optional[Dict[int, int]]) -> np.ndarray:
    """``label`` with each key of ``label_map`` replaced by its value (the dataset's ``gt_label_map``,
    applied as the evaluator applies it); unchanged without a map."""
    if not label_map:
        return label
    mapped = label.astype(np.int64)
    for stored, scored in label_map.items():
        mapped[label == int(stored)] = int(scored)
    return mapped


def check_pair(image_path: str, label_path: str, num_classes: int, ignore_label: int,
               label_map: Optional[Dict[int, int]] = None) -> Tuple[Optional[np.ndarray], List[str]]:
    """(pixel counts: classes 0..C-1, then the ignore label, or None when unusable; problems naming
    the files). Labels are 8- or 16-bit index PNGs; ``label_map``: the dataset's ``gt_label_map``."""
    problems = []
    try:
        image_size = _image_size(image_path)
    except Exception as e:  # PIL raises several types for unreadable files
        problems.append(f"image '{image_path}': unreadable ({type(e).__name__}: {e})")
        image_size = None
    try:
        with Image.open(label_path) as im:
            mode = im.mode
            label = np.asarray(im) if mode in ("L", "P", "I", "I;16") else None
    except Exception as e:
        return None, problems + [f"label '{label_path}': unreadable ({type(e).__name__}: {e})"]
    if label is None:
        return None, problems + [f"label '{label_path}': mode {mode}; labels must be single-channel index PNGs "
                                 "(mode L, P, or 16-bit I;16 / I: class index per pixel). Convert colour "
                                 "renderings to indices."]
    if image_size is not None and label.shape != image_size:
        problems.append(f"label '{label_path}': size {label.shape[1]}x{label.shape[0]} differs from its image "
                        f"'{image_path}' {image_size[1]}x{image_size[0]} (width x height)")
    values, counts = np.unique(_apply_label_map(label, label_map), return_counts=True)
    bad = [(int(v), int(c)) for v, c in zip(values, counts) if v != ignore_label and not 0 <= v < num_classes]
    if bad:
        mapped = " after the dataset's gt_label_map" if label_map else ""
        shown = ", ".join(f"{v} ({c} px)" for v, c in bad[:_SHOW_VALUES]) + (", ..." if len(bad) > _SHOW_VALUES else "")
        problems.append(f"label '{label_path}': values {shown}{mapped} are neither class indices 0..{num_classes - 1} "
                        f"nor the ignore label {ignore_label}")
        return None, problems
    hist = np.zeros(num_classes + 1, np.int64)
    hist[np.where(values == ignore_label, num_classes, values).astype(np.int64)] = counts
    return hist, problems


def _check_star(args):
    return check_pair(*args)


def check_dataset(dicts: Sequence[Dict], num_classes: int, ignore_label: int = 255, workers: int = 1,
                  progress: bool = True, label_map: Optional[Dict[int, int]] = None) -> Dict[str, object]:
    """Check every pair of ``dicts`` (``file_name``, ``sem_seg_file_name``) -> {"pixels": per class,
    "images": per class (images containing it), "ignore_pixels", "num_images", "problems"};
    ``label_map``: the dataset's ``gt_label_map`` (stored -> scored label), applied before counting."""
    label_map = {int(k): int(v) for k, v in (label_map or {}).items()} or None
    jobs = [(d["file_name"], d["sem_seg_file_name"], num_classes, ignore_label, label_map) for d in dicts]
    pixels = np.zeros(num_classes, np.int64)
    images = np.zeros(num_classes, np.int64)
    ignored, problems = 0, []
    pool = Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_check_star, jobs, chunksize=8) if pool else map(_check_star, jobs)
        for hist, found in tqdm(results, total=len(jobs), desc="checking labels", unit="label", disable=not progress):
            problems += found
            if hist is not None:
                pixels += hist[:num_classes]
                images += hist[:num_classes] > 0
                ignored += int(hist[num_classes])
    finally:
        if pool:
            pool.close()
    return {"num_images": len(jobs), "pixels": pixels.tolist(), "images": images.tolist(), "ignore_pixels": ignored,
            "problems": problems, "gt_label_map": label_map}


def load_dicts(name: str) -> Tuple[List[Dict], List[str]]:
    """The dataset's pairs, and the pairing problems (unmatched files) instead of an exception."""
    try:
        return DatasetCatalog.get(name), []
    except FileNotFoundError as e:
        if "missing from" not in str(e):
            raise  # a missing folder: nothing to check
        previous = os.environ.get(UNMATCHED_ENV)
        os.environ[UNMATCHED_ENV] = "warn"  # check the matched pairs too
        try:
            return DatasetCatalog.get(name), [str(e)]
        finally:
            if previous is None:
                del os.environ[UNMATCHED_ENV]
            else:
                os.environ[UNMATCHED_ENV] = previous


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="a registered dataset name (e.g. from --register FILE)")
    add_register_argument(parser)
    parser.add_argument("--image-root", help="without --dataset: the image folder")
    parser.add_argument("--label-root", help="without --dataset: the label folder (index PNGs)")
    parser.add_argument("--classes", help='without --dataset: comma-separated class names in label order')
    parser.add_argument("--classes-file", help="without --dataset: class names, one per line, in label order")
    parser.add_argument("--unseen", default="", help="without --dataset: comma-separated unseen class names")
    parser.add_argument("--image-ext", default=".jpg", help="without --dataset: image file extension (default .jpg)")
    parser.add_argument("--ignore-label", type=int, default=255,
                        help="without --dataset: ignore value (default 255; 16-bit labels: e.g. 65535)")
    parser.add_argument("--workers", type=int, default=1, help="processes reading labels (default 1)")
    parser.add_argument("--max-problems", type=int, default=50, help="problems printed at most (default 50)")
    parser.add_argument("--output", metavar="FILE", help="also write the counts and all problems as JSON")
    return parser


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    load_user_modules(args.register)
    if args.dataset:
        name = args.dataset
        if name not in DatasetCatalog.list():
            parser.error(f"dataset '{name}' is not registered; register it in a Python file and pass --register FILE "
                         "(or set LDVC_DATASETS), or check a folder with --image-root/--label-root/--classes.")
    else:
        if not (args.image_root and args.label_root and (args.classes or args.classes_file)):
            parser.error("give --dataset NAME, or --image-root, --label-root and --classes (or --classes-file).")
        classes = parse_class_list(args.classes) if args.classes else read_vocabulary_file(args.classes_file)
        unseen = [u.strip() for u in args.unseen.split(",") if u.strip()]
        name = register_zero_shot_folder(f"<{args.label_root}>", args.image_root, args.label_root, classes, unseen,
                                         ignore_label=args.ignore_label, image_ext=args.image_ext)
    meta = MetadataCatalog.get(name)
    classes, ignore = list(meta.stuff_classes), int(meta.get("ignore_label", 255))
    unseen = set(meta.get("unseen_classes", []))
    try:
        dicts, problems = load_dicts(name)
    except FileNotFoundError as e:
        print(f"PROBLEM: {e}")
        return 1
    label_map = meta.get("gt_label_map", None)
    report = check_dataset(dicts, len(classes), ignore, args.workers, label_map=label_map)
    report["problems"] = problems + report["problems"]
    labelled = max(sum(report["pixels"]), 1)
    rows = [[i, c, "unseen" if i in unseen else "seen", f"{p:,}", f"{100 * p / labelled:.2f}", n]
            for i, (c, p, n) in enumerate(zip(classes, report["pixels"], report["images"]))]
    print(f"dataset '{name}': {report['num_images']} image/label pairs, {len(classes)} classes "
          f"({len(classes) - len(unseen)} seen, {len(unseen)} unseen), ignore label {ignore}: "
          f"{report['ignore_pixels']:,} pixels"
          + (f"; counted after the dataset's gt_label_map {label_map}" if label_map else ""))
    print(tabulate(rows, headers=["id", "class", "split", "pixels", "% of labelled", "images"], tablefmt="pipe",
                   colalign=("right", "left", "left", "right", "right", "right")))
    empty = [c for c, p in zip(classes, report["pixels"]) if p == 0]
    if empty:
        print(f"note: {len(empty)} class(es) have no pixel here: {', '.join(empty)}")
    if args.output:
        write_json_atomic(args.output, {"dataset": name, "classes": classes, **report})
    for problem in report["problems"][:args.max_problems]:
        print(f"PROBLEM: {problem}")
    if report["problems"]:
        more = len(report["problems"]) - args.max_problems
        print((f"... and {more} more (all of them: --output FILE). " if more > 0 else "")
              + f"{len(report['problems'])} problem(s) found; fix them before training.")
        return 1
    print("OK: every label is a valid index PNG of its image's size.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
