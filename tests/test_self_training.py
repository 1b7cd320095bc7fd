"""Transductive self-training (DESIGN §1.5): only pixels whose ground truth is an unseen class get
pseudo-labels (the arg-max *unseen* class of the model's prediction); seen pixels and ignore keep theirs."""
import pytest
import torch
from detectron2.modeling import build_model

import ldvc_d2.modeling.decoder_segmentor as meta_arch
from tests.conftest import registered_toy_dataset, tiny_cfg  # toy classes: unseen 2 and 4



@pytest.fixture(scope="module")
def toy():
    with registered_toy_dataset("ldvc_test_toy_self_training") as name:
        yield name


def _model(dataset, *opts):
    cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)",
                   "MODEL.SEGMENTOR.TRAINING_CLASSES", "all", "MODEL.SEGMENTOR.SELF_TRAINING", "True", *opts)
    torch.manual_seed(0)
    return build_model(cfg)


def test_pseudo_labels_replace_exactly_the_unseen_pixels(toy):
    model = _model(toy)
    assert model.self_training_classes.tolist() == [2, 4] and model.calibration == 0.0
    targets = torch.tensor([[[0, 2, 4], [255, 3, 2]]])  # 1×2×3
    logits = torch.full((1, 5, 2, 3), -5.0)
    logits[0, 0] = 9.0  # a seen class scores highest everywhere: must never become a pseudo-label
    logits[0, 4, 0, 1] = 3.0  # unseen "red square" wins among the unseen at (0, 1)
    logits[0, 2, 0, 2] = 1.0  # unseen "blue star" wins at (0, 2)
    logits[0, 4, 1, 2] = 0.5  # and "red square" at (1, 2)
    got = model.pseudo_label(logits, targets)
    assert got.tolist() == [[[0, 4, 2], [255, 3, 4]]]
    # independent check on random data
    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([0, 1, 2, 3, 4, 255])[torch.randint(0, 6, (2, 8, 8), generator=g)]
    logits = torch.randn(2, 5, 8, 8, generator=g)
    got = model.pseudo_label(logits, targets)
    unseen_mask = (targets == 2) | (targets == 4)
    best_unseen = torch.where(logits[:, 4] > logits[:, 2], 4, 2)
    assert torch.equal(got[unseen_mask], best_unseen[unseen_mask])
    assert torch.equal(got[~unseen_mask], targets[~unseen_mask])


def test_training_step_uses_pseudo_labels(toy, monkeypatch):
    model = _model(toy).train()
    seen_targets = {}
    real_loss = meta_arch.focal_dice_loss

    def spy(logits, targets, **kw):
        seen_targets["logits"], seen_targets["targets"] = logits.detach(), targets
        return real_loss(logits, targets, **kw)

    monkeypatch.setattr(meta_arch, "focal_dice_loss", spy)
    label = torch.tensor([0, 1, 2, 3, 4])[torch.arange(128 * 128).reshape(128, 128) % 5]
    losses = model([{"image": torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8), "sem_seg": label}])
    assert all(torch.isfinite(v) for v in losses.values())
    t, lg = seen_targets["targets"][0], seen_targets["logits"][0]
    unseen = (label == 2) | (label == 4)
    assert torch.equal(t[~unseen], label[~unseen])
    assert set(t[unseen].unique().tolist()) <= {2, 4}
    assert torch.equal(t[unseen], torch.where(lg[4] > lg[2], 4, 2)[unseen])


def test_self_training_needs_all_class_names(toy):
    with pytest.raises(ValueError, match="TRAINING_CLASSES 'all'"):
        _model(toy, "MODEL.SEGMENTOR.TRAINING_CLASSES", "seen")


def test_inductive_training_ignores_unseen_pixels(toy):
    model = _model(toy, "MODEL.SEGMENTOR.SELF_TRAINING", "False", "MODEL.SEGMENTOR.TRAINING_CLASSES", "seen")
    assert len(model.self_training_classes) == 0
