"""Shared fixtures: small randomly initialised CLIP models (no downloads) and configs."""
import logging
import os

import pytest
import torch

import ldvc_d2  # noqa: F401  (compat shims before any detectron2.data import)
from detectron2.config import get_cfg
from ldvc_d2 import add_ldvc_config
from ldvc_d2.modeling.clip import build_clip_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _ldvc_logs_reach_caplog():
    """Tools run in-process call setup_logger(name="ldvc_d2"), which stops propagation to the root
    logger where pytest's caplog listens; restore it for every test."""
    logger = logging.getLogger("ldvc_d2")
    saved = logger.propagate
    logger.propagate = True
    yield
    logger.propagate = saved


@pytest.fixture(scope="session")
def vit_b16():
    """open_clip ViT-B-16 with random weights, and its tokenizer."""
    torch.manual_seed(0)
    return build_clip_model("ViT-B-16", "")


@pytest.fixture(scope="session")
def tiny_clip():
    torch.manual_seed(0)
    return build_clip_model("LDVC-Tiny", "")


def tiny_cfg(config_file: str = "configs/demo.yaml", *opts):
    """A config from the repository with the tiny random CLIP swapped in."""
    cfg = get_cfg()
    add_ldvc_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config_file))
    cfg.merge_from_list(["MODEL.LDVC.CLIP_MODEL", "LDVC-Tiny", "MODEL.LDVC.CLIP_PRETRAINED", "",
                         "MODEL.DEVICE", "cpu", *opts])
    return cfg
