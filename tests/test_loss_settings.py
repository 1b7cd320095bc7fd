"""The loss settings of a config reach the loss, and the training batch is built as the protocol says.

The reference is ZegCLIP's loss written from its definition (paper §4.1 / DESIGN §1.3), in plain Python
loops: per (image, class) the mean over pixels of the sigmoid focal term ``-a_t (1 - p_t)^gamma log p_t``,
summed over all pairs; dice ``1 - (2 Σpt + 1) / (Σp + Σt + 1)`` over the pairs present in the image;
both divided by the number of present pairs (at least 1) and weighted. The labels it sees are the raw
maps padded on the bottom/right with the ignore label and mapped to training classes by hand (toy
dataset: seen classes 0, 1, 3 -> 0, 1, 2; every other value -> ignore).
"""
import math

import pytest
import torch
from detectron2.modeling import build_model

from tests.conftest import toy_cfg

SEEN_TO_TRAIN = {0: 0, 1: 1, 3: 2}


def _model(dataset, config, *opts):
    cfg = toy_cfg(dataset, config, *opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    # logits: a fixed function of each image's own pixels, so a test knows them without the network
    model.logits = lambda images, text: torch.stack(
        [images[:, c % 3] * 0.7 * (c + 1) - 0.3 * c for c in range(len(text))], dim=1)
    return model


def zegclip_loss(logits, labels, *, alpha, gamma, focal_weight, dice_weight, ignore, ignore_as_negative):
    """logits: nested lists B×C×H×W; labels: B×H×W training-class indices or ``ignore``."""
    focal_sum, dice_sum, present = 0.0, 0.0, 0
    for img_logits, lab in zip(logits, labels):
        for c, cl in enumerate(img_logits):
            terms, sp, st, spt = [], 0.0, 0.0, 0.0
            for y, row in enumerate(cl):
                for x, z in enumerate(row):
                    if lab[y][x] == ignore and not ignore_as_negative:
                        continue
                    t = 1.0 if lab[y][x] == c else 0.0
                    p = 1.0 / (1.0 + math.exp(-z))
                    pt, at = (p, alpha) if t else (1 - p, 1 - alpha)
                    terms.append(-at * (1 - pt) ** gamma * math.log(pt))
                    sp, st, spt = sp + p, st + t, spt + p * t
            focal_sum += sum(terms) / max(len(terms), 1)
            if st > 0:
                present += 1
                dice_sum += 1 - (2 * spt + 1) / (sp + st + 1)
    n = max(present, 1)
    return focal_weight * focal_sum / n, dice_weight * dice_sum / n


def _inputs(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        label = torch.randint(0, 5, (h, w), generator=g)
        label[torch.rand(h, w, generator=g) < 0.15] = 255
        out.append({"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), "sem_seg": label})
    return out


def _padded_training_labels(inputs, size, ignore):
    labels = []
    for x in inputs:
        raw = x["sem_seg"].tolist()
        labels.append([[SEEN_TO_TRAIN.get(raw[y][xx], ignore) if y < len(raw) and xx < len(raw[0]) else ignore
                        for xx in range(size[1])] for y in range(size[0])])
    return labels


SETTINGS = [  # (alpha, gamma, focal weight, dice weight, ignore as negative, ignore label)
    (0.4, 1.5, 3.0, 2.0, True, 255),
    (0.7, 0.0, 0.5, 5.0, False, 255),
    (0.25, 3.0, 1.0, 1.0, False, 254),
]


@pytest.mark.parametrize("config", ["configs/demo.yaml", "configs/shapes/zegclip.yaml"])
@pytest.mark.parametrize("alpha,gamma,fw,dw,neg,ignore", SETTINGS)
def test_config_loss_settings_change_the_loss_as_a_hand_computation_says(toy_dataset, config, alpha, gamma, fw, dw,
                                                                         neg, ignore):
    model = _model(toy_dataset, config, "INPUT.CROP.ENABLED", "False", "MODEL.SEGMENTOR.LOSS.FOCAL_ALPHA", str(alpha),
                   "MODEL.SEGMENTOR.LOSS.FOCAL_GAMMA", str(gamma), "MODEL.SEGMENTOR.LOSS.FOCAL_WEIGHT", str(fw),
                   "MODEL.SEGMENTOR.LOSS.DICE_WEIGHT", str(dw), "MODEL.SEGMENTOR.LOSS.IGNORE_AS_NEGATIVE", str(neg),
                   "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", str(ignore))
    inputs = _inputs([(20, 27), (13, 30)])
    m = model.pad_multiple
    size = (math.ceil(20 / m) * m, math.ceil(30 / m) * m)  # the largest crop, rounded up to the padding unit
    images, _ = model.training_batch(inputs)
    assert images.shape[-2:] == size
    logits = model.logits(images, [0, 1, 2])
    losses = model(inputs)
    focal, dice = zegclip_loss(logits.tolist(), _padded_training_labels(inputs, size, ignore), alpha=alpha,
                               gamma=gamma, focal_weight=fw, dice_weight=dw, ignore=ignore, ignore_as_negative=neg)
    assert losses["loss_focal"].item() == pytest.approx(focal, rel=1e-4)
    assert losses["loss_dice"].item() == pytest.approx(dice, rel=1e-4)


def test_training_crops_are_padded_to_the_crop_size_whatever_the_batch(toy_dataset):
    """INPUT.CROP.SIZE 64: a 24x20 crop alone and next to a 64x30 one is the same 64x64 tensor (image 0 after
    normalisation = the pixel mean, label = ignore on the bottom/right), so its per-image focal mean and the
    loss sums do not depend on the batch: n_AB * L(A, B) = n_A * L(A) + n_B * L(B)."""
    model = _model(toy_dataset, "configs/demo.yaml", "INPUT.CROP.SIZE", "(64, 64)",
                   "MODEL.SEGMENTOR.LOSS.IGNORE_AS_NEGATIVE", "True")
    a, b = _inputs([(24, 20), (64, 30)], seed=3)
    alone_img, alone_lab = model.training_batch([a])
    pair_img, pair_lab = model.training_batch([a, b])
    assert alone_img.shape == (1, 3, 64, 64) and pair_img.shape == (2, 3, 64, 64)
    torch.testing.assert_close(alone_img[0], pair_img[0])
    assert torch.equal(alone_lab[0], pair_lab[0])
    mean, std = model.pixel_mean, model.pixel_std
    torch.testing.assert_close(alone_img[0, :, :24, :20], (a["image"].float() - mean) / std)
    assert (alone_img[0, :, 24:] == 0).all() and (alone_img[0, :, :, 20:] == 0).all()
    ref = torch.tensor(_padded_training_labels([a], (64, 64), 255)[0])
    assert torch.equal(alone_lab[0], ref)

    def weighted(inputs):
        labels = model.training_batch(inputs)[1]
        n = sum(int((labels[i] == c).any()) for i in range(len(inputs)) for c in range(3))
        return max(n, 1) * model(inputs)["loss_focal"].item()

    assert weighted([a, b]) == pytest.approx(weighted([a]) + weighted([b]), rel=1e-5)
