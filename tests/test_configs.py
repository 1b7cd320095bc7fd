"""Every config in configs/ builds a model (the tiny random CLIP swapped in for ViT-B/16)."""
import glob
import os

import pytest
from detectron2.modeling import build_model

from tests.conftest import REPO, tiny_cfg

CONFIGS = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                 if not os.path.basename(p).startswith("Base-"))


def test_configs_exist():
    assert {"configs/demo.yaml", "configs/voc.yaml", "configs/coco_stuff.yaml", "configs/context.yaml"} <= set(CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_builds_a_model(config):
    cfg = tiny_cfg(config, "MODEL.LCTD.NUM_HEADS", "4")
    model = build_model(cfg)
    assert model.backbone.visual.num_prompts == cfg.MODEL.LDVC.VISUAL_PROMPTS
    if cfg.MODEL.LDVC.CLASS_EMBEDDINGS == "text":
        assert model.backbone.text.num_prompts == cfg.MODEL.LDVC.TEXT_PROMPTS
    else:
        assert not any(p.requires_grad for p in model.backbone.text.parameters())
    assert len(model.sem_seg_head.blocks) == cfg.MODEL.LCTD.NUM_BLOCKS
    if cfg.DATASETS.TRAIN:
        assert model.train_class_names, f"{config}: no training classes from {cfg.DATASETS.TRAIN}"
    if cfg.MODEL.LDVC.TRAINING_CLASSES == "all":
        assert model.calibration == 0.0


def test_paper_hyper_parameters():
    voc, coco = tiny_cfg("configs/voc.yaml"), tiny_cfg("configs/coco_stuff.yaml")
    assert (voc.MODEL.LDVC.VISUAL_PROMPTS, coco.MODEL.LDVC.VISUAL_PROMPTS) == (40, 100)
    assert (voc.SOLVER.MAX_ITER, coco.SOLVER.MAX_ITER) == (20000, 80000)
    for cfg in (voc, coco):
        assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == 2e-4 and cfg.SOLVER.WEIGHT_DECAY == 0.01
        assert cfg.SOLVER.WARMUP_ITERS == 1500 and cfg.SOLVER.POLY_LR_POWER == 0.9
        assert cfg.MODEL.LDVC.TEXT_PROMPTS == 6 and cfg.MODEL.LCTD.NUM_BLOCKS == 2
        assert (cfg.MODEL.LCTD.WINDOW_SIZE, cfg.MODEL.LCTD.TOPK_WINDOWS) == (4, 16)
        assert cfg.MODEL.LDVC.LOSS.FOCAL_WEIGHT == 100 and cfg.MODEL.LDVC.LOSS.DICE_WEIGHT == 1
        assert tuple(cfg.INPUT.CROP.SIZE) == (512, 512) and cfg.MODEL.LDVC.INFERENCE.STRIDE == 426
