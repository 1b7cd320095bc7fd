"""Focal + dice loss (DESIGN §1.3) against a per-pixel hand computation."""
import pytest
import torch

from ldvc_d2.modeling.losses import focal_dice_loss
from tests.test_loss_settings import zegclip_loss


def _hand(logits, labels, ignore_as_negative, alpha=0.25, gamma=2.0):
    """Plain-Python loops over images, classes and pixels (unweighted focal and dice, ignore label 255)."""
    return zegclip_loss(logits, labels, alpha=alpha, gamma=gamma, focal_weight=1.0, dice_weight=1.0, ignore=255,
                        ignore_as_negative=ignore_as_negative)


@pytest.mark.parametrize("ignore_as_negative", [True, False])
def test_focal_dice_matches_hand_computation(ignore_as_negative):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 3, 4) * 2
    labels = torch.tensor([
        [[0, 0, 255, 1], [0, 255, 1, 1], [255, 255, 255, 1]],  # classes 0 and 1 present
        [[2, 2, 2, 2], [2, 255, 255, 2], [2, 2, 2, 2]],  # only class 2
    ])
    out = focal_dice_loss(logits, labels, ignore_as_negative=ignore_as_negative)
    focal, dice = _hand(logits.tolist(), labels.tolist(), ignore_as_negative)
    assert out["loss_focal"].item() == pytest.approx(100 * focal, rel=1e-5)
    assert out["loss_dice"].item() == pytest.approx(dice, rel=1e-5)


def test_ignore_as_negative_changes_the_loss_and_weights_apply():
    torch.manual_seed(1)
    logits = torch.randn(1, 2, 4, 4)
    labels = torch.full((1, 4, 4), 255)
    labels[0, :2] = 0
    a = focal_dice_loss(logits, labels, ignore_as_negative=True, focal_weight=1.0, dice_weight=2.0)
    b = focal_dice_loss(logits, labels, ignore_as_negative=False, focal_weight=1.0, dice_weight=2.0)
    assert a["loss_focal"] != b["loss_focal"] and a["loss_dice"] != b["loss_dice"]
    focal, dice = _hand(logits.tolist(), labels.tolist(), True)
    assert a["loss_focal"].item() == pytest.approx(focal, rel=1e-5)
    assert a["loss_dice"].item() == pytest.approx(2 * dice, rel=1e-5)


def test_all_ignored_image_gives_finite_loss():
    logits = torch.randn(1, 2, 2, 2, requires_grad=True)
    out = focal_dice_loss(logits, torch.full((1, 2, 2), 255))
    assert torch.isfinite(out["loss_focal"]) and out["loss_dice"].item() == 0.0
