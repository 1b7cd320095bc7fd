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
  ``weights_only=True``, which refuses the NumPy objects that detectron2's trainer writes into its
  own checkpoints (fvcore, used by every detectron2 version, does not pass the argument), so
  ``--resume`` fails. The shim tries ``weights_only=True`` first and, only for a file that needs
  it, loads with ``weights_only=False`` and logs a warning naming the file: point MODEL.WEIGHTS only
  at checkpoints you trust. This shim applies to current detectron2 too (the cause is fvcore).
"""
import inspect
import logging
import pickle

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
    import torch
    from fvcore.common.checkpoint import Checkpointer

    if "weights_only" not in inspect.signature(torch.load).parameters:
        return  # PyTorch < 1.13: torch.load has no such restriction.
    if getattr(Checkpointer._load_file, "_ldvc_compat", False):
        return

    def _load_file(self, f: str):
        try:
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError:
            logging.getLogger(__name__).warning(
                f"{f} holds Python objects besides tensors (a detectron2 training checkpoint); loading "
                "it with weights_only=False. Only load checkpoints you trust."
            )
            return torch.load(f, map_location=torch.device("cpu"), weights_only=False)

    _load_file._ldvc_compat = True
    Checkpointer._load_file = _load_file


def apply() -> None:
    """Apply every shim once; safe to call many times."""
    global _applied
    if _applied:
        return
    _patch_pil()
    _patch_numpy()
    _patch_torch_load()
    _applied = True
