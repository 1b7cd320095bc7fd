"""DeOP stage 3's paper configs hold the released recipe, and refuse to start without the earlier stages' files."""
import pytest
import torch
from detectron2.modeling import build_model

from ldvc_d2.config import validate_config
from ldvc_d2.solver import build_optimizer
from tests.conftest import file_cfg, toy_cfg

STAGE3 = ["voc.yaml", "coco_stuff.yaml", "paper_variant.yaml", "voc_class_agnostic.yaml", "coco_stuff_class_agnostic.yaml"]


def _cfg(name, *opts):
    return file_cfg(f"configs/deop/{name}", *opts)


@pytest.mark.parametrize("name", STAGE3)
def test_stage3_configs_hold_the_released_recipe(name):
    cfg = _cfg(name)
    clip, d = cfg.SOLVER.CLIP_GRADIENTS, cfg.MODEL.DEOP
    assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE) == (True, "full_model", 0.01, 2.0)
    assert d.CAL_HEAT_DROPOUT == 0.1 and not d.ALLOW_RANDOM_TEXT_PROMPTS
    assert (d.PROPOSAL_NET.BACKBONE, list(d.PROPOSAL_NET.RES5_MULTI_GRID)) == ("resnet101s", [1, 2, 4])  # as stage 2
    assert d.CAL_HEATMAP_HEADS == (1 if name == "paper_variant.yaml" else 0)
    # COCO-Stuff: released 640 crops trimmed to 512 by SIZE_DIVISIBILITY 512; VOC: 512 (Base-Segmentor)
    assert tuple(cfg.INPUT.CROP.SIZE) == (512, 512)
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 1.0  # released: no one-class crop retry
    assert (d.PROPOSAL_NET.CLASS_AGNOSTIC, d.PROPOSAL_NET.MASK_LOSS_ONLY) == (("class_agnostic" in name),) * 2


@pytest.mark.parametrize("name", STAGE3)
def test_stage3_refuses_to_start_without_the_stage1_prompts_or_stage2_network(name):
    with pytest.raises(ValueError, match=r"MODEL.DEOP.TEXT_PROMPT_WEIGHTS is empty.*stage1_.*ALLOW_RANDOM_TEXT_PROMPTS"):
        validate_config(_cfg(name, "MODEL.DEOP.PROPOSAL_WEIGHTS", "p.pth"), training=True)
    with pytest.raises(ValueError, match=r"MODEL.DEOP.PROPOSAL_WEIGHTS is empty"):
        validate_config(_cfg(name, "MODEL.DEOP.TEXT_PROMPT_WEIGHTS", "t.pth"), training=True)
    validate_config(_cfg(name, "MODEL.DEOP.PROPOSAL_WEIGHTS", "p.pth", "MODEL.DEOP.TEXT_PROMPT_WEIGHTS", "t.pth"),
                    training=True)
    validate_config(_cfg(name, "MODEL.WEIGHTS", "stage3.pth"), training=True)  # a stage-3 checkpoint holds both
    validate_config(_cfg(name, "MODEL.DEOP.PROPOSAL_WEIGHTS", "p.pth", "MODEL.DEOP.ALLOW_RANDOM_TEXT_PROMPTS", "True"),
                    training=True)
    validate_config(_cfg(name), training=False)


@pytest.mark.parametrize("name", ["shapes_oracle.yaml", "shapes_clusters.yaml"])
def test_shapes_configs_opt_out_explicitly(name):
    cfg = _cfg(name)
    assert cfg.MODEL.DEOP.ALLOW_RANDOM_TEXT_PROMPTS and cfg.MODEL.DEOP.CAL_HEAT_DROPOUT == 0.0
    validate_config(cfg, training=True)


def test_the_model_gets_the_heat_settings_and_the_clipping_optimizer(toy_dataset):
    cfg = toy_cfg(toy_dataset, "configs/deop/shapes_oracle.yaml", "MODEL.DEOP.CAL_HEAT_DROPOUT", "0.25",
                  "MODEL.DEOP.CAL_HEATMAP_HEADS", "1", "SOLVER.CLIP_GRADIENTS.ENABLED", "True",
                  "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.01")
    torch.manual_seed(0)
    model = build_model(cfg)
    assert (model.cal.heat_dropout, model.cal.heatmap_heads, model.cal.heads) == (0.25, 1, 4)
    assert type(build_optimizer(cfg, model)).__name__ == "FullModelClippingAdamW"
