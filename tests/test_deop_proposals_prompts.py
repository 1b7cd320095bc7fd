"""DeOP stage 1 (SEED_SYSTEMS D5): CoOp prompts learned by classifying ground-truth region crops."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from ldvc_d2.modeling.deop.prompt_learning import region_crops
from ldvc_d2.solver import build_optimizer
from tests.conftest import TOY_CLASSES, registered_toy_dataset, tiny_cfg

CONFIG = "configs/deop/stage1_shapes.yaml"


def _model(*opts):
    with registered_toy_dataset("deop_stage1_toy") as name:
        cfg = tiny_cfg(CONFIG, "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", *opts)
        torch.manual_seed(0)
        return cfg, build_model(cfg)


def test_region_crops_are_the_masked_bounding_boxes():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 10, 12)
    targets = torch.full((2, 10, 12), 255)
    targets[0, 2:6, 3:9] = 1  # a 4x6 box ...
    targets[0, 2, 3] = 0  # ... with one pixel of class 0 inside (a 1-pixel region, dropped below)
    targets[1, 5:9, 0:6] = 2
    targets[1, 5, 0:2] = 255  # ignore pixels inside the box are filled too
    crops, labels = region_crops(images, targets, ignore_label=255, size=4, mask_fill="none", min_pixels=2)
    assert labels.tolist() == [1, 2] and crops.shape == (2, 3, 4, 4)
    box = F.interpolate(images[0:1, :, 2:6, 3:9], size=(4, 4), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(crops[0], box)
    crops, labels = region_crops(images, targets, ignore_label=255, size=4, mask_fill="mean", min_pixels=1)
    assert labels.tolist() == [0, 1, 2] and crops.shape == (3, 3, 4, 4)
    assert torch.allclose(crops[0], images[0, :, 2:3, 3:4].expand(3, 4, 4))  # the 1-pixel region, resized
    masked = images[1, :, 5:9, 0:6] * (targets[1, 5:9, 0:6] == 2)
    assert torch.allclose(crops[2], F.interpolate(masked[None], size=(4, 4), mode="bilinear", align_corners=False)[0])
    empty, none = region_crops(images, torch.full_like(targets, 255), ignore_label=255, size=4)
    assert empty.shape == (0, 3, 4, 4) and none.numel() == 0


def test_loss_is_cross_entropy_of_clip_crop_features_against_the_prompts():
    cfg, model = _model()
    model.train()
    image = torch.randint(0, 256, (3, 64, 64)).float()
    label = torch.full((64, 64), 255)
    label[:32] = 0  # "red circle", seen, training index 0
    label[32:, :40] = 3  # "yellow triangle", seen, training index 2
    label[40:, 40:] = 2  # "blue star", unseen: ignored
    loss = model([{"image": image, "sem_seg": label}])["loss_region_ce"]

    normalised = (image - model.pixel_mean) / model.pixel_std
    clip = model.image_encoder.visual
    crops = []
    for rows, cols in ((slice(0, 32), slice(0, 64)), (slice(32, 64), slice(0, 40))):
        crops.append(F.interpolate(normalised[None, :, rows, cols], size=clip.image_size, mode="bilinear",
                                   align_corners=False)[0])
    with torch.no_grad():
        features = F.normalize(clip(torch.stack(crops)), dim=-1)  # open_clip's own image embedding
    text = model.text_encoder([TOY_CLASSES[i] for i in (0, 1, 3)])
    expected = F.cross_entropy(cfg.MODEL.DEOP.PROMPT_LEARNING.LOGIT_SCALE * features @ text.t(), torch.tensor([0, 2]))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_one_step_trains_exactly_the_text_prompts():
    cfg, model = _model("SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "0.1")
    model.train()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["text_encoder.ctx"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = [{"image": torch.randint(0, 256, (3, 64, 64)).float(), "sem_seg": torch.randint(0, 5, (64, 64))}
             for _ in range(2)]
    optimizer = build_optimizer(cfg, model)
    sum(model(batch).values()).backward()
    optimizer.step()
    after = model.state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == {"text_encoder.ctx"}
    assert [k for k in after if k.split(".")[-1] == "ctx"] == ["text_encoder.ctx"]  # what stage 3 loads


def test_eval_scores_every_test_class():
    _, model = _model()
    model.eval()
    out = model([{"image": torch.randint(0, 256, (3, 40, 56)).float(), "class_names": TOY_CLASSES}])
    scores = out[0]["sem_seg"]
    assert scores.shape == (5, 40, 56)
    assert torch.allclose(scores.sum(0), torch.ones(40, 56), atol=1e-5)  # a softmax over the classes
