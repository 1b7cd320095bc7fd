"""Your own dataset in a few lines: a folder of images, a folder of index-PNG labels, a class list.

    from ldvc_d2.data import register_zero_shot_folder
    CLASSES = ["road", "car", "tree", "person", "sky"]
    register_zero_shot_folder("mydata_train", "data/mydata/images/train", "data/mydata/labels/train",
                              CLASSES, unseen_classes=["car", "tree"])
    register_zero_shot_folder("mydata_val", "data/mydata/images/val", "data/mydata/labels/val",
                              CLASSES, unseen_classes=["car", "tree"])

Images and labels are paired by file stem (``images/train/0001.jpg`` <-> ``labels/train/0001.png``).
A label is a single-channel PNG of the image's size whose pixel values are class indices into
``class_names`` (0..C-1) or ``ignore_label`` (255); with more than 255 classes, a 16-bit PNG and an
``ignore_label`` above C-1 (e.g. 65535, with MODEL.SEM_SEG_HEAD.IGNORE_VALUE 65535 for training).
The registered sets carry the metadata of the
benchmarks (:mod:`.zero_shot_sem_seg`), so training (inductive: unseen pixels are ignored),
evaluation and the tools work on them unchanged. ``python tools/check_dataset.py --dataset NAME``
validates every label and prints the class pixel counts.

Registrations in a Python file of your own reach every command through the environment variable
``LDVC_DATASETS`` (file paths or module names, separated by ``os.pathsep``): ``import ldvc_d2``
imports them (:func:`load_user_modules`), also in the worker processes of multi-GPU training.
"""
import argparse
import functools
import importlib
import importlib.util
import os
import sys
from typing import List, Sequence, Union

from detectron2.data import DatasetCatalog

from .zero_shot_sem_seg import load_zero_shot_sem_seg, set_zero_shot_metadata

__all__ = [
    "USER_DATASETS_ENV", "add_register_argument", "load_user_modules", "load_zero_shot_folder",
    "register_zero_shot_folder",
]

USER_DATASETS_ENV = "LDVC_DATASETS"
_REGISTERED = {}  # name -> the arguments it was registered with (identical re-registration is a no-op)


def load_zero_shot_folder(
    name: str, image_root: str, label_root: str, *, image_ext: str = ".jpg", images_need_labels: bool = True
) -> List[dict]:
    """Dataset dicts of a folder dataset; errors name the folder or the unmatched files."""
    check = f"python tools/check_dataset.py --dataset {name}"
    for kind, folder in (("label", label_root), ("image", image_root)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"dataset '{name}': {kind} folder '{folder}' does not exist (registered with "
                                    "register_zero_shot_folder; relative paths are relative to the working directory).")
    if not any(f.endswith(".png") for f in os.listdir(label_root)):
        raise FileNotFoundError(f"dataset '{name}': label folder '{label_root}' holds no .png files; labels must be "
                                "single-channel index PNGs named like their images.")
    return load_zero_shot_sem_seg(name, image_root, label_root, prepare_command=check, image_ext=image_ext,
                                  images_need_labels=images_need_labels)


def _check_class_names(class_names: Sequence[str], name: str) -> List[str]:
    """Stripped names; a string instead of a list, empty names and names CLIP cannot tell apart
    (equal up to case and spaces, as its tokenizer sees them) are errors."""
    if isinstance(class_names, str):
        raise TypeError(f"dataset '{name}': class_names is the string {class_names!r}; give a list of names, "
                        "e.g. ['road', 'car'] (a string would make one class per character).")
    names = [str(c).strip() for c in class_names]
    if not names or any(not c for c in names):
        raise ValueError(f"dataset '{name}': class_names must be a non-empty list of non-empty names.")
    first = {}
    for i, c in enumerate(names):
        key = " ".join(c.split()).lower()
        if key in first:
            j = first[key]
            same = "appear more than once" if names[j] == c else "differ only in case or spaces, which CLIP ignores"
            raise ValueError(f"dataset '{name}': class names {j} ('{names[j]}') and {i} ('{c}') {same}; "
                             "give each class once.")
        first[key] = i
    return names


def _class_indices(unseen: Sequence[Union[int, str]], class_names: Sequence[str], name: str) -> List[int]:
    out = []
    for u in unseen:
        if isinstance(u, str):
            if u not in class_names:
                raise ValueError(f"dataset '{name}': unseen class '{u}' is not in class_names {list(class_names)}.")
            u = class_names.index(u)
        if not 0 <= int(u) < len(class_names):
            raise ValueError(f"dataset '{name}': unseen class index {u} is outside 0..{len(class_names) - 1}.")
        out.append(int(u))
    if len(set(out)) != len(out):
        raise ValueError(f"dataset '{name}': unseen_classes {list(unseen)} name a class twice.")
    return sorted(out)


def register_zero_shot_folder(
    name: str,
    image_root: str,
    label_root: str,
    class_names: Sequence[str],
    unseen_classes: Sequence[Union[int, str]] = (),
    *,
    ignore_label: int = 255,
    image_ext: str = ".jpg",
    images_need_labels: bool = True,
) -> str:
    """Register a folder dataset for training or zero-shot evaluation; returns ``name``.

    Args:
        class_names: all classes, in label order (label value k = ``class_names[k]``).
        unseen_classes: names or indices of the classes held out from training ("seen" = the rest);
            empty for a fully supervised set. Evaluation is always over all classes. A set whose
            classes are all unseen can be evaluated (mIoU(S) is then NaN) but not trained on inductively.
        ignore_label: label value that is not a class (not trained, not evaluated). Keep 255 unless
            you also set MODEL.SEM_SEG_HEAD.IGNORE_VALUE to it; it must not be a class index (more
            than 255 classes: 16-bit label PNGs and e.g. 65535).
        image_ext: extension of the images (".jpg", ".png", ...).
        images_need_labels: an image without a label is an error (True), or is left out (False, for
            image folders shared by several splits).

    Touches no file (like the benchmarks' registrations): folders are read when the dataset is used.
    Registering a name again with the same arguments does nothing; with others it is an error.
    """
    names = _check_class_names(class_names, name)
    if len(names) > 65535:
        raise ValueError(f"dataset '{name}': {len(names)} classes, but labels are PNGs of at most 16 bits whose "
                         "values are class indices plus the ignore label, so at most 65535 classes.")
    if 0 <= ignore_label < len(names) or not 0 <= ignore_label <= 65535:
        hint = " (more than 255 classes: 16-bit labels, e.g. ignore_label 65535)" if len(names) > 255 else ""
        raise ValueError(f"dataset '{name}': ignore_label {ignore_label} must be in {len(names)}..65535, outside the "
                         f"class indices 0..{len(names) - 1}{hint}.")
    if not image_ext.startswith("."):
        image_ext = "." + image_ext
    unseen = _class_indices(unseen_classes, names, name)
    args = (image_root, label_root, tuple(names), tuple(unseen), ignore_label, image_ext, images_need_labels)
    if name in _REGISTERED and _REGISTERED[name] == args:
        return name
    if name in DatasetCatalog.list():
        raise ValueError(f"Dataset '{name}' is already registered (differently); choose another name, or call "
                         "DatasetCatalog.remove(name) and MetadataCatalog.remove(name) first.")
    DatasetCatalog.register(name, functools.partial(
        load_zero_shot_folder, name, image_root, label_root, image_ext=image_ext,
        images_need_labels=images_need_labels))
    set_zero_shot_metadata(name, names, unseen, image_root, label_root, ignore_label)
    _REGISTERED[name] = args
    return name


def add_register_argument(parser: argparse.ArgumentParser) -> None:
    """The commands' ``--register FILE`` option (repeatable), read back by :func:`load_user_modules`."""
    parser.add_argument("--register", action="append", default=[], metavar="FILE",
                        help=f"Python file (or module) that registers datasets of your own; repeatable "
                             f"(README 'Your own dataset'; the {USER_DATASETS_ENV} variable does the same)")


def load_user_modules(specs: Union[str, Sequence[str], None] = None) -> List[str]:
    """Import Python files or modules that register datasets; returns their module names.

    ``specs``: paths to ``.py`` files or importable module names, as a list or one string separated
    by ``os.pathsep``; default: the ``LDVC_DATASETS`` environment variable. A file is imported once
    per process (by its absolute path), so its registrations do not run twice.
    """
    if specs is None:
        specs = os.environ.get(USER_DATASETS_ENV, "")
    if isinstance(specs, str):
        specs = [s for s in specs.split(os.pathsep) if s.strip()]
    loaded = []
    for spec in specs:
        spec = spec.strip()
        if spec.endswith(".py") or os.sep in spec:
            path = os.path.abspath(spec)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Dataset registration file '{spec}' does not exist (from --register or "
                                        f"${USER_DATASETS_ENV}).")
            module_name = "ldvc_user_datasets_" + "".join(c if c.isalnum() else "_" for c in path)
            if module_name not in sys.modules:
                module_spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[module_name] = module
                try:
                    module_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
        else:
            module_name = spec
            importlib.import_module(spec)
        loaded.append(module_name)
    return loaded
