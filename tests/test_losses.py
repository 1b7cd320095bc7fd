"""Focal + dice loss (DESIGN §1.3) against a per-pixel hand computation."""
import math

import pytest
import torch

from ldvc_d2.modeling.losses import focal_dice_loss


def _hand(logits, labels, ignore_as_negative, alpha=0.25, gamma=2.0):
    """Plain-Python loops over images, classes and pixels."""
    b, c, h, w = len(logits), len(logits[0]), len(logits[0][0]), len(logits[0][0][0])
    focal_sum = dice_sum = 0.0
    present = 0
    for bi in range(b):
        for ci in range(c):
            pix = [(y, x) for y in range(h) for x in range(w)
                   if ignore_as_negative or labels[bi][y][x] != 255]
            terms, sp, st, spt = [], 0.0, 0.0, 0.0
            for y, x in pix:
                t = 1.0 if labels[bi][y][x] == ci else 0.0
                p = 1 / (1 + math.exp(-logits[bi][ci][y][x]))
                pt = p if t else 1 - p
                a = alpha if t else 1 - alpha
                terms.append(-a * (1 - pt) ** gamma * math.log(pt))
                sp, st, spt = sp + p, st + t, spt + p * t
            focal_sum += sum(terms) / max(len(terms), 1)
            if st > 0:
                present += 1
                dice_sum += 1 - (2 * spt + 1) / (sp + st + 1)
    n = max(present, 1)
    return focal_sum / n, dice_sum / n


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
