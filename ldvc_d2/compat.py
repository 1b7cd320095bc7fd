"""Shims that let detectron2 v0.6 run on current Pillow, NumPy and PyTorch. Nothing else lives here.

detectron2 v0.6 (the last release, and the only one installable from PyPI as ``pb1-detectron2``) was
written against Pillow < 10, NumPy < 1.24 and PyTorch < 2.6. Current detectron2 (from its git
repository) no longer needs the Pillow/NumPy ones, and each is applied only where the name it
provides is missing.

Shims (applied by :func:`apply`, which ``import ldvc_d2`` calls before detectron2 is imported):

* ``PIL.Image.LINEAR`` (and ``CUBIC``, ``ANTIALIAS``): aliases removed in Pillow 10.
  detectron2.data.transforms uses ``Image.LINEAR`` as a default argument, so ``import
  detectron2.data`` fails without it.
* ``numpy.int``, ``numpy.float``, ``numpy.bool``, ``numpy.str``, ``numpy.object``: aliases removed in
  NumPy 1.24. detectron2 v0.6 uses them in ``SemSegEvaluator``, ``Visualizer`` (``np.bool``),
  ``build.py`` (class histogram) and the Pascal VOC loader.
* ``fvcore.common.checkpoint.Checkpointer._load_file``: since PyTorch 2.6, ``torch.load`` defaults to
  ``weights_only=True``, which refuses the NumPy arrays and scalars that detectron2 checkpoints may
  hold (fvcore, used by every detectron2 version, does not pass the argument). The shim loads through
  :func:`ldvc_d2.checkpoint.load_checkpoint_file`: ``weights_only=True`` plus an allow-list of exactly
  those NumPy types; anything else is refused with an error naming the file and the type (README,
  "Trusting files"). This applies to current detectron2 too (the cause is fvcore).
* ``detectron2.checkpoint.DetectionCheckpointer._load_file``: it reads ``.pkl`` files with plain
  ``pickle.load`` and ``.pyth`` files with ``torch.load`` without ``weights_only`` (v0.6 and current
  detectron2), so such a file could run code even through detectron2's own checkpointer. The shim
  reads both through :func:`ldvc_d2.checkpoint.load_zoo_file` (same allow-list, same result dict);
  ``.pth`` files still go through detectron2's code (and so through the fvcore shim above).
  Importing ``detectron2.checkpoint`` here is safe: it does not import ``detectron2.data``.
"""
import numpy as np
from PIL import Image

__all__ = ["apply"]

_PIL_ALIASES = {"LINEAR": "BILINEAR", "CUBIC": "BICUBIC", "ANTIALIAS": "LANCZOS"}
_NUMPY_ALIASES = {"int": int, "float": float, "bool": bool, "str": str, "object": object}
_applied = False


def _patch_pil() -> None:
    for alias, name in _PIL_ALIASES.items():
        if not hasattr(Image, alias):
            resampling = getattr(Image, "Resampling", Image)
            setattr(Image, alias, getattr(resampling, name))


def _patch_numpy() -> None:
    for alias, value in _NUMPY_ALIASES.items():
        if alias not in vars(np):  # not getattr: NumPy warns on (or refuses) the removed names
            setattr(np, alias, value)


def _patch_torch_load() -> None:
    from fvcore.common.checkpoint import Checkpointer

    if getattr(Checkpointer._load_file, "_ldvc_compat", False):
        return

    def _load_file(self, f: str):
        from .checkpoint import CheckpointLoadError, load_checkpoint_file  # imports detectron2: not at shim time

        data = load_checkpoint_file(f)
        if not isinstance(data, dict):
            raise CheckpointLoadError(f"Checkpoint '{f}' holds a {type(data).__name__}, not a dict of weights.")
        return data

    _load_file._ldvc_compat = True
    Checkpointer._load_file = _load_file


def _patch_detectron2_loader() -> None:
    try:
        from detectron2.checkpoint import DetectionCheckpointer
    except ImportError:  # detectron2 not installed: nothing to make safe
        return

    original = DetectionCheckpointer._load_file
    if getattr(original, "_ldvc_compat", False):
        return

    def _load_file(self, filename: str):
        from .checkpoint import ZOO_SUFFIXES, load_zoo_file

        return load_zoo_file(filename) if filename.endswith(ZOO_SUFFIXES) else original(self, filename)

    _load_file._ldvc_compat = True
    DetectionCheckpointer._load_file = _load_file


def apply() -> None:
    """Apply every shim once; safe to call many times."""
    global _applied
    if _applied:
        return
    _patch_pil()
    _patch_numpy()
    _patch_torch_load()
    _patch_detectron2_loader()
    _applied = True
