#!/usr/bin/env python
"""Segment your own images with any vocabulary: colour overlay with legend, label map, scores.

    python demo/demo.py --config-file configs/demo.yaml --input img1.jpg photos/ "more/*.png" \\
        --output out/ --classes "cat,sofa,lamp" --opts MODEL.WEIGHTS output/demo/model_final.pth

The vocabulary is one of: --classes (comma-separated), --vocabulary-file (one name per line,
blank lines and '#' comments skipped) or --dataset-classes NAME (a registered dataset's classes; its
seen classes then get the seen-score calibration, as in evaluation). Per input image ``<stem>``:

* ``<stem>_overlay.png``: the prediction over the image (Detectron2's Visualizer) with a legend of
  the predicted classes and their share of the image;
* ``<stem>_labels.png``: the raw label map, pixel = class index in the vocabulary; 8-bit when there
  are at most 255 classes (unlabelled = 255), else 16-bit (unlabelled = 65535). Pixels are
  unlabelled only with --threshold;
* with --save-scores: ``<stem>_scores.npy`` (C×H×W float16 sigmoid scores) and/or
  ``<stem>_scores.png`` (one heat map per class).

``vocabulary.json`` in the output folder records the class order, colours and the unlabelled
value. Files are written under a temporary name and renamed when complete. An unreadable image, or one
too elongated for the test resize, is reported (naming the file) and skipped; the exit status is then
1. 16-bit greyscale images are scaled to 8 bits; overlays are at most 4096 pixels long.
"""
import argparse
import glob
import logging
import os
import sys
from typing import List

import numpy as np
from tqdm import tqdm

import ldvc_d2  # noqa: F401  (first: detectron2 0.6 shims, registrations)
from ldvc_d2.data import add_register_argument
from ldvc_d2.data.image_io import read_image
from ldvc_d2.predictor import UNLABELED, OpenVocabPredictor, add_vocabulary_arguments, load_config, start_tool
from ldvc_d2.utils import write_json_atomic, write_npy_atomic, write_png_atomic
from ldvc_d2.utils.visualization import draw_map_grid, draw_overlay, vocabulary_colors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
OVERLAY_MIN_SIDE = 384  # small images are drawn enlarged to this short side, so class names stay legible
OVERLAY_MAX_SIDE = 4096  # ... but never beyond this long side (a 1x1000 image would otherwise take GBs)
logger = logging.getLogger("ldvc_d2.demo")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example:\n" + __doc__.split("\n\n")[1])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config, e.g. configs/demo.yaml")
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="image files, folders (their images) or glob patterns")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (created)")
    add_vocabulary_arguments(parser)
    parser.add_argument("--save-scores", nargs="?", const="both", choices=["npy", "png", "both"],
                        help="also save per-class score maps: .npy, a grid .png, or both (the default when "
                             "given without a value)")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="pixels whose best score is below this are unlabelled (default 0: label every pixel)")
    parser.add_argument("--alpha", type=float, default=0.6, help="opacity of the overlay colours")
    add_register_argument(parser)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. --opts MODEL.WEIGHTS output/demo/model_final.pth")
    return parser


def expand_inputs(patterns: List[str]) -> List[str]:
    """Files as given, folders -> their images (sorted), glob patterns -> their matches (sorted)."""
    files = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(os.path.join(pattern, f) for f in os.listdir(pattern) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise FileNotFoundError(f"--input folder '{pattern}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        elif os.path.exists(pattern):
            found = [pattern]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
            if not found:
                raise FileNotFoundError(f"--input '{pattern}': no such file, and no file matches it as a pattern.")
        files += found
    stems = {}
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        if stem in stems and os.path.abspath(stems[stem]) != os.path.abspath(f):
            raise ValueError(f"--input '{stems[stem]}' and '{f}' would write the same outputs '{stem}_*'; "
                             "rename one or run them separately.")
        stems[stem] = f
    return list(dict.fromkeys(files))


def load_image(path: str) -> np.ndarray:
    """H×W×3 uint8 RGB (EXIF orientation applied, 16-bit grey scaled to 8 bits); ValueError naming the
    file when unreadable."""
    return read_image(path, format="RGB")


def overlay_min_side(height: int, width: int) -> float:
    """The ``min_side`` for draw_overlay: enlarge small images to OVERLAY_MIN_SIDE, but keep the long
    side within OVERLAY_MAX_SIDE (never shrinking below the image's own size)."""
    short, long = min(height, width), max(height, width)
    return min(float(OVERLAY_MIN_SIDE), short * max(1.0, OVERLAY_MAX_SIDE / long))


def label_png(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 H×W labels (UNLABELED = -1) -> uint8 (<= 255 classes, unlabelled 255) or uint16 (65535)."""
    dtype = np.uint8 if num_classes <= 255 else np.uint16
    return np.where(labels == UNLABELED, np.iinfo(dtype).max, labels).astype(dtype)


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    names, seen, colors = start_tool(args)
    if len(colors) != len(names):
        colors = vocabulary_colors(len(names))
    files = expand_inputs(args.input)
    predictor = OpenVocabPredictor(load_config(args.config_file, args.opts), input_format="RGB")
    os.makedirs(args.output, exist_ok=True)
    unlabeled = int(label_png(np.array([UNLABELED]), len(names))[0])
    write_json_atomic(os.path.join(args.output, "vocabulary.json"), {
        "class_names": names, "colors": [list(c) for c in colors], "seen_classes": seen,
        "unlabeled_value": unlabeled, "config_file": args.config_file, "weights": predictor.cfg.MODEL.WEIGHTS,
        "weights_status": predictor.weights_status,  # file, sha256, load status
    })
    failed = []
    for path in tqdm(files, desc="demo", unit="image"):
        stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
        try:
            image = load_image(path)
            out = predictor(image, names, seen_classes=seen, score_threshold=args.threshold)
        except ValueError as e:  # unreadable, or an aspect ratio the test resize cannot handle
            logger.error(f"Image '{path}' skipped: {e}")
            failed.append(path)
            continue
        labels = out["labels"].numpy()
        overlay = draw_overlay(image, labels, names, colors, alpha=args.alpha,
                               min_side=overlay_min_side(*image.shape[:2]))
        write_png_atomic(stem + "_overlay.png", overlay)
        write_png_atomic(stem + "_labels.png", label_png(labels, len(names)))
        scores = out["sem_seg"].numpy()
        if args.save_scores in ("npy", "both"):
            write_npy_atomic(stem + "_scores.npy", scores.astype(np.float16))
        if args.save_scores in ("png", "both"):
            grid = draw_map_grid(image, [("input", scores)], names, title=f"{os.path.basename(path)}: class scores",
                                 colorbar_label="sigmoid score")
            write_png_atomic(stem + "_scores.png", grid)
    done = len(files) - len(failed)
    logger.info(f"Wrote the results of {done} image(s) to '{args.output}'.")
    if failed:
        logger.error(f"{len(failed)} image(s) could not be segmented: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
