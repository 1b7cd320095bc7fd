"""LDVC meta-architecture: training view of the labels, frozen CLIP, inference protocol."""
import pytest
import torch
from detectron2.modeling import build_model

from tests.conftest import TOY_CLASSES, registered_toy_dataset, tiny_cfg

CLASSES = TOY_CLASSES


@pytest.fixture(scope="module")
def toy_dataset():
    with registered_toy_dataset("ldvc_test_toy_meta_arch") as name:
        yield name


def _model(dataset, *opts):
    cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)", *opts)
    torch.manual_seed(0)
    return build_model(cfg)


def _batch(n=2, size=64):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
             "sem_seg": torch.randint(0, 5, (size, size), generator=g)} for _ in range(n)]


def test_training_classes_and_label_view(toy_dataset):
    model = _model(toy_dataset)
    assert model.train_class_names == ["red circle", "green square", "yellow triangle"]
    assert model.label_lut[:6].tolist() == [0, 1, 255, 2, 255, 255] and model.label_lut[255] == 255
    full = _model(toy_dataset, "MODEL.SEGMENTOR.TRAINING_CLASSES", "all")
    assert full.train_class_names == CLASSES and full.label_lut[:5].tolist() == [0, 1, 2, 3, 4]
    assert full.calibration == 0.0 and model.calibration == pytest.approx(0.1)


def test_training_step_updates_prompts_and_head_only(toy_dataset):
    model = _model(toy_dataset)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = model(_batch())
    assert set(losses) == {"loss_focal", "loss_dice"}
    sum(losses.values()).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(model.get_parameter(n).grad is None for n in frozen)
    assert not (changed & frozen)
    assert {"backbone.visual.prompts", "backbone.text.prompts"} <= changed
    assert any(n.startswith("sem_seg_head.text_adapter") for n in changed)
    assert any(n.startswith("sem_seg_head.blocks.1.self_attn") for n in changed)
    assert len(frozen) > 50 and not any("prompts" in n for n in frozen)


def test_unseen_pixels_do_not_count_as_positives(toy_dataset):
    """With every pixel unseen, targets are all ignore: no present class, dice 0."""
    model = _model(toy_dataset)
    model.train()
    batch = [{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "sem_seg": torch.full((64, 64), 2)}]
    assert model(batch)["loss_dice"].item() == 0.0
    batch[0]["sem_seg"][:32] = 3  # yellow triangle, training index 2
    assert model(batch)["loss_dice"].item() > 0.0


def test_inference_output_size_vocabulary_and_calibration(toy_dataset):
    model = _model(toy_dataset, "MODEL.SEGMENTOR.INFERENCE.MODE", "whole")
    model.eval()
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    out = model([{"image": image, "height": 48, "width": 64}])[0]["sem_seg"]
    assert out.shape == (5, 48, 64)
    custom = model([{"image": image, "class_names": ["lamp", "cat"]}])[0]["sem_seg"]
    assert custom.shape == (2, 96, 128)
    model.calibration = 0.0
    raw = model([{"image": image}])[0]["sem_seg"]
    model.calibration = 0.1
    cal = model([{"image": image}])[0]["sem_seg"]
    torch.testing.assert_close(raw[[0, 1, 3]] - 0.1, cal[[0, 1, 3]])
    torch.testing.assert_close(raw[[2, 4]], cal[[2, 4]])
    assert raw.min() >= 0 and raw.max() <= 1


def test_sliding_window_averages_window_scores(toy_dataset):
    model = _model(toy_dataset, "MODEL.SEGMENTOR.INFERENCE.CROP_SIZE", "64", "MODEL.SEGMENTOR.INFERENCE.STRIDE", "32",
                   "MODEL.SEGMENTOR.SEEN_SCORE_CALIBRATION", "0.0")
    model.eval()
    image = torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8)
    out = model([{"image": image}])[0]["sem_seg"]
    text = model.text_features(CLASSES)
    norm = model._normalize(image)
    total = torch.zeros(5, 64, 128)
    count = torch.zeros(1, 64, 128)
    for x1 in (0, 32, 64):  # ceil((128 - 64) / 32) + 1 = 3 windows
        total[:, :, x1:x1 + 64] += model.window_scores(model._pad(norm[:, :, x1:x1 + 64], 0.0)[None], text)[:, :64, :64]
        count[:, :, x1:x1 + 64] += 1
    torch.testing.assert_close(out, total / count)
    small = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)  # smaller than the crop: one window
    model.inference_mode = "whole"
    whole = model([{"image": small}])[0]["sem_seg"]
    model.inference_mode = "slide"
    torch.testing.assert_close(model([{"image": small}])[0]["sem_seg"], whole)


def test_text_features_cached_in_eval_only(toy_dataset, monkeypatch):
    model = _model(toy_dataset, "MODEL.SEGMENTOR.INFERENCE.MODE", "whole")
    calls = []
    encode = model.backbone.encode_text
    monkeypatch.setattr(model.backbone, "encode_text", lambda names: calls.append(tuple(names)) or encode(names))
    model.eval()
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    model([{"image": image}, {"image": image}])
    model([{"image": image, "class_names": ["lamp"]}])
    model([{"image": image}])
    assert calls == [tuple(CLASSES), ("lamp",)]
    model.train()
    model.eval()
    model([{"image": image}])
    assert len(calls) == 3


def test_missing_classes_are_clear_errors():
    model = build_model(tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"))
    model.eval()
    with pytest.raises(ValueError, match="No class names for inference"):
        model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8)}])
    model.train()
    with pytest.raises(ValueError, match="no training classes"):
        model(_batch(1))
