"""The tiny CLIP's cache, and the ``MODEL.CLIP.PRETRAINED`` tags that resolve to it.

``MODEL.CLIP.MODEL "LDVC-Tiny"`` with ``MODEL.CLIP.PRETRAINED "shapes"`` (or another tag of
``TINY_CLIP_RECIPES``) loads the checkpoint :func:`ensure_tiny_clip` returns: the one cached under
``$DETECTRON2_DATASETS/shapes_zs_clip/``, written on first use from the checkpoint shipped with the package
(:mod:`.shipped`) or, for a recipe without one, pretrained (:mod:`.tiny_clip`). Importing this module
registers the tags with the CLIP loader (:func:`ldvc_d2.modeling.clip.loading.register_local_weights`).
"""
import functools
import logging
import os
from typing import Optional

import torch

from ...modeling.clip.loading import register_local_weights
from ...utils.io import atomic_path
from .shipped import read_shipped, shipped_path
from .tiny_clip import TINY_CLIP_MODEL, TINY_CLIP_RECIPES, TINY_CLIP_TAG, PretrainConfig, pretrain_tiny_clip

__all__ = ["cache_path", "ensure_tiny_clip"]

logger = logging.getLogger(__name__)


def cache_path(cache_dir: Optional[str], cfg: PretrainConfig = PretrainConfig()) -> str:
    """Where the checkpoint of recipe ``cfg`` is cached: ``<cache_dir or $DETECTRON2_DATASETS/shapes_zs_clip>/
    LDVC-Tiny-shapes-<digest>.pt``."""
    root = cache_dir or os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "shapes_zs_clip")
    return os.path.join(root, f"{TINY_CLIP_MODEL}-{TINY_CLIP_TAG}-{cfg.digest()}.pt")


def ensure_tiny_clip(cache_dir: Optional[str] = None, cfg: PretrainConfig = PretrainConfig()) -> str:
    """Path of the cached tiny-CLIP checkpoint for ``cfg``. When it is missing, it is written from the
    checkpoint shipped with the package for that recipe (:func:`.shipped.shipped_path`) if there is one, else
    pretrained (a few minutes on a CPU)."""
    path = cache_path(cache_dir, cfg)
    if os.path.isfile(path):
        return path
    shipped = shipped_path(cfg)
    if shipped.is_file():
        logger.info(f"No tiny CLIP at {path}; writing the one shipped with ldvc_d2 ({shipped.name}: this recipe, "
                    f"pretrained once; `python tools/pretrain_tiny_clip.py --force` pretrains it afresh).")
        state, metrics = read_shipped(shipped, cfg)
        with atomic_path(path) as tmp:
            torch.save({"state_dict": state, "ldvc_tiny_clip": {**metrics, "source": shipped.name}}, tmp)
    else:
        logger.info(f"No tiny CLIP at {path}; pretraining it (once, a few minutes on a CPU).")
        pretrain_tiny_clip(path, cfg)
    return path


for _tag, _recipe in TINY_CLIP_RECIPES.items():
    register_local_weights(TINY_CLIP_MODEL, _tag, functools.partial(ensure_tiny_clip, cfg=_recipe))
