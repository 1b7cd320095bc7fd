"""Shared fixtures: small randomly initialised CLIP models (no downloads) and configs."""
import contextlib
import logging
import os

import pytest
import torch

import ldvc_d2  # noqa: F401  (compat shims before any detectron2.data import)
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from ldvc_d2 import add_ldvc_config
from ldvc_d2.config import load_config_file
from ldvc_d2.modeling.clip import build_clip_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The files that take longest (train_net.py processes, several-process runs, exports), longest first.
# `make test` runs the files on pytest-xdist workers (--dist loadfile), handed out in collection order:
# starting these first keeps a long file from running alone at the end while the other worker idles.
LONGEST_FIRST = (
    "test_export.py", "test_app_browser.py", "test_configs.py", "test_distributed.py", "test_tiny_clip_shipped.py",
    "test_tiny_clip.py", "test_distributed_cli.py", "test_train_net.py", "test_gpu_check.py", "test_resume.py",
    "test_cliptrase.py", "test_benchmark_speed.py",
)


def pytest_collection_modifyitems(items):
    """The LONGEST_FIRST files first, in that order; the other files after them, as collected (the sort is
    stable, and keeps the order of the tests within a file)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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


def file_cfg(config_file: str, *opts):
    """A config from the repository as written (read as train_net reads it), with ``opts`` merged."""
    cfg = get_cfg()
    add_ldvc_config(cfg)
    load_config_file(cfg, os.path.join(REPO, config_file))
    cfg.merge_from_list(list(opts))
    return cfg


def tiny_cfg(config_file: str = "configs/demo.yaml", *opts):
    """A config from the repository with the tiny random CLIP swapped in (and random C2S students: the paper
    configs' hub ids are never downloaded in tests)."""
    return file_cfg(config_file, "MODEL.CLIP.MODEL", "LDVC-Tiny", "MODEL.CLIP.PRETRAINED", "",
                    "MODEL.C2S.STUDENT_WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts)


@pytest.fixture(scope="module")
def toy_dataset(request):
    """A registered toy dataset (:func:`registered_toy_dataset`) named after the test module, for its tests."""
    with registered_toy_dataset(f"ldvc_test_toy_{request.module.__name__.rsplit('.', 1)[-1]}") as name:
        yield name


def toy_cfg(dataset: str, config_file: str = "configs/demo.yaml", *opts):
    """:func:`tiny_cfg` training and testing on the registered dataset ``dataset``."""
    return tiny_cfg(config_file, "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)", *opts)


TOY_CLASSES = ["red circle", "green square", "blue star", "yellow triangle", "red square"]


@contextlib.contextmanager
def registered_toy_dataset(name: str):
    """An empty registered dataset with TOY_CLASSES: seen [0, 1, 3], unseen [2, 4] (metadata only)."""
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(stuff_classes=TOY_CLASSES, seen_classes=[0, 1, 3], unseen_classes=[2, 4],
                                  ignore_label=255, evaluator_type="zero_shot_sem_seg")
    try:
        yield name
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
