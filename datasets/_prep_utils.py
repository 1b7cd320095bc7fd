"""Shared machinery of the ``prepare_*.py`` scripts: reading labels, checking them, remapping them
through a lookup table, writing them atomically, and running the conversion in parallel.

Every conversion is a :class:`Job` (one source label -> one output index PNG, checked against its
image). A job whose output exists is skipped, and outputs are written under a hidden temporary name
then renamed (``os.replace``): an interrupted run leaves no half-written PNG, and a re-run resumes.
Errors name the offending file (:class:`LabelError`).
"""
import argparse
import contextlib
import functools
import importlib.util
import multiprocessing
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

IGNORE = 255
IGNORE16 = 65535  # ignore value of the 16-bit label sets (more than 255 classes)
INVALID = -1  # lookup-table entry for a source value that must not occur
_TMP_SUFFIX = ".tmp"


def load_class_module(name: str) -> ModuleType:
    """A class-list module of ``ldvc_d2/data/datasets/`` (e.g. ``builtin_classes``), loaded by path:
    the single source of truth, without importing torch/detectron2 through the ``ldvc_d2`` package."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "ldvc_d2", "data",
                        "datasets", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_ldvc_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLASSES = load_class_module("builtin_classes")


class LabelError(ValueError):
    """A source label that cannot be converted; the message names the file and says why."""


class CountWarning(UserWarning):
    """A split has a different number of images than the official dataset."""


@dataclass(frozen=True)
class Job:
    """Convert ``source`` (a label file) into ``output``; ``image`` is the matching image."""

    source: str
    image: str
    output: str


def base_parser(description: str) -> argparse.ArgumentParser:
    """Parser with the options every script shares: ``--root``, ``--workers``, ``--center-crop``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("DETECTRON2_DATASETS", "datasets"),
                        help="datasets root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="worker processes (default: min(8, CPUs)); 1 runs in-process")
    parser.add_argument("--center-crop", type=int, nargs="+", default=[], metavar="N",
                        help="also write centre-cropped N x N copies of the evaluation split "
                             "(image + label) under ROOT/cropN/ (CLIPtrase's protocol: 224, 336)")
    return parser


def read_list(path: str) -> List[str]:
    """Image ids of a split list (one per line; blank lines ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split list '{path}' not found")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def list_stems(folder: str, ext: str) -> Dict[str, str]:
    """Map stem -> path for the non-hidden files of ``folder`` ending in ``ext``."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder '{folder}' not found; see datasets/README.md")
    return {n[: -len(ext)]: os.path.join(folder, n) for n in os.listdir(folder)
            if n.endswith(ext) and not n.startswith(".")}


def read_index_png(path: str) -> np.ndarray:
    """Pixel values of a single-channel PNG (palette "P": the palette index; "L"/"I": the value)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I", "I;16"):
                raise LabelError(
                    f"{path}: label is a {image.mode} (colour or multi-channel) image, expected a "
                    "single-channel index PNG whose pixel values are class ids (palette 'P' or "
                    "grayscale 'L'). Use the labels as distributed, not colour renderings of them.")
            return np.array(image)
    except LabelError:
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise LabelError(f"{path}: cannot read label image ({e})") from e


def read_mat_field(path: str, key: str, *fields: str) -> np.ndarray:
    """``loadmat(path)[key].field1.field2...`` as an array, e.g. SBD's ``GTcls.Segmentation``."""
    from scipy.io import loadmat

    try:
        value = loadmat(path, squeeze_me=True, struct_as_record=False)[key]
        for field in fields:
            value = getattr(value, field)
    except (KeyError, AttributeError) as e:
        raise LabelError(f"{path}: no '{'.'.join((key,) + fields)}' in the .mat file") from e
    except (OSError, ValueError, TypeError, NotImplementedError) as e:
        raise LabelError(f"{path}: cannot read .mat file ({e})") from e
    return np.asarray(value)


def image_hw(path: str) -> Tuple[int, int]:
    """(height, width) of an image, read from its header."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError, SyntaxError) as e:
        raise LabelError(f"{path}: cannot read image ({e})") from e


def make_lut(size: int, mapping: Dict[int, int], default: int = INVALID) -> np.ndarray:
    """Lookup table over source values ``0..size-1``: ``mapping`` where given, else ``default``
    (INVALID: the value must not occur)."""
    lut = np.full(size, default, dtype=np.int32)
    for source, target in mapping.items():
        lut[source] = target
    return lut


def _ranges(values: Iterable[int]) -> str:
    """'0-20, 255' for [0, 1, ..., 20, 255]."""
    spans: List[List[int]] = []
    for v in sorted(values):
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def apply_lut(label: np.ndarray, lut: np.ndarray, path: str, hint: str = "",
              dtype: type = np.uint8) -> np.ndarray:
    """Map source values through ``lut`` to an index map of ``dtype`` (uint8, or uint16 for sets with
    more than 255 classes); a value the table does not allow raises :class:`LabelError` naming
    ``path``, the values, and the allowed range."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise LabelError(f"{path}: label has shape {label.shape}, expected a 2-D map")
    if label.dtype.kind == "f":
        if not np.all(np.mod(label, 1) == 0):
            raise LabelError(f"{path}: label holds non-integer values")
        label = label.astype(np.int64)
    values = np.unique(label)
    in_table = (values >= 0) & (values < len(lut))
    bad = values[~in_table].tolist()
    bad += [v for v in values[in_table].tolist() if lut[v] == INVALID]
    if bad:
        allowed = _ranges(np.flatnonzero(lut != INVALID).tolist())
        raise LabelError(f"{path}: label values {sorted(bad)[:10]} are not valid source ids "
                         f"(allowed: {allowed}). {hint}".rstrip())
    return lut[label].astype(dtype)


def save_image_atomic(image: Image.Image, path: str) -> None:
    """Save ``image`` (format from ``path``'s extension) to a hidden temporary name, then rename it
    to ``path``: an interrupted run never leaves a half-written file under the final name."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        image.save(tmp, format=Image.registered_extensions()[os.path.splitext(name)[1].lower()])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_png_atomic(label: np.ndarray, path: str) -> None:
    """Write a uint8 (8-bit) or uint16 (16-bit) index PNG atomically (:func:`save_image_atomic`)."""
    label = np.asarray(label)
    if label.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"{path}: labels are written as uint8 or uint16, got {label.dtype}")
    save_image_atomic(Image.fromarray(np.ascontiguousarray(label)), path)


def _run_job(convert: Callable[[Job], np.ndarray], job: Job) -> str:
    if os.path.exists(job.output):
        return "skipped"
    label = convert(job)
    height, width = image_hw(job.image)
    if label.shape != (height, width):
        raise LabelError(f"{job.source}: label size {label.shape[1]}x{label.shape[0]} (WxH) "
                         f"differs from image '{job.image}' ({width}x{height})")
    save_png_atomic(label, job.output)
    return "written"


def _remove_stale_temps(folders: Iterable[str]) -> None:
    for folder in folders:
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    os.remove(os.path.join(folder, name))


def run_jobs(convert: Callable[[Job], np.ndarray], jobs: Sequence[Job], workers: int,
             desc: str) -> Counter:
    """Run ``convert`` on every job (``workers`` processes, tqdm progress) and write the outputs;
    returns counts of ``"written"`` and ``"skipped"``. ``convert`` must be picklable (a module-level
    function or a ``functools.partial`` of one). Temp files of an interrupted run are removed
    first, so do not run two preparations of the same folder at once."""
    return run_parallel(functools.partial(_run_job, convert), jobs, workers, desc,
                        [os.path.dirname(j.output) for j in jobs])


def run_parallel(work: Callable, items: Sequence, workers: int, desc: str,
                 out_dirs: Iterable[str]) -> Counter:
    """Call ``work(item)`` for every item (``workers`` processes, tqdm progress); returns the counts
    of the strings it returns. Stale temp files in ``out_dirs`` are removed first."""
    _remove_stale_temps(set(out_dirs))
    jobs = list(items)
    parallel = workers > 1 and len(jobs) > 1
    counts: Counter = Counter()
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(jobs), desc=desc, unit="img", file=sys.stderr))
        if parallel:
            pool = stack.enter_context(multiprocessing.Pool(workers))
            statuses: Iterable[str] = pool.imap_unordered(work, jobs, chunksize=16)
        else:
            statuses = map(work, jobs)
        for status in statuses:
            counts[status] += 1
            bar.update()
    return counts


def check_count(found: int, expected: int, what: str) -> None:
    """Warn (:class:`CountWarning`) with both numbers when a split is not the official size."""
    if found != expected:
        warnings.warn(f"{what}: {found} images, the official dataset has {expected}. Check that "
                      "the download is complete (see datasets/README.md).", CountWarning,
                      stacklevel=2)


def report_unmatched(names: Sequence[str], what: str, fatal: bool, show: int = 5) -> None:
    """Raise ``FileNotFoundError`` (``fatal``) or warn about ``names``, with their count and the
    first few, so that no file is dropped silently."""
    if not names:
        return
    names = sorted(names)
    more = ", ..." if len(names) > show else ""
    text = f"{len(names)} {what}: " + ", ".join(names[:show]) + more
    if fatal:
        raise FileNotFoundError(text)
    warnings.warn(text, CountWarning, stacklevel=2)


def folder_jobs(label_dir: str, image_dir: str, out_dir: str, what: str,
                label_ext: str = ".png", image_ext: str = ".jpg") -> List[Job]:
    """Jobs pairing every label of ``label_dir`` with its image, sorted by stem (a missing image is
    an error, an image without a label a warning)."""
    labels = list_stems(label_dir, label_ext)
    images = list_stems(image_dir, image_ext)
    report_unmatched([s + label_ext for s in labels if s not in images],
                     f"{what} labels without an image in '{image_dir}'", fatal=True)
    report_unmatched([s + image_ext for s in images if s not in labels],
                     f"{what} images without a label in '{label_dir}'", fatal=False)
    return [Job(labels[s], images[s], os.path.join(out_dir, s + ".png")) for s in sorted(labels)]


def summarize(split: str, counts: Counter, folder: str) -> None:
    """Print one line per finished split."""
    print(f"{split}: {counts['written']} written, {counts['skipped']} already done -> {folder}")


def run_main(prepare: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
             argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, run ``prepare``; a data error prints ``error: ...`` and returns 1."""
    args = parser.parse_args(argv)
    try:
        prepare(args)
    except (LabelError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
