"""The shared nearest-neighbour label resize (ldvc_d2/modeling/label_ops.py) and its users in C2S and DeOP.

The reference is an explicit gather: target pixel (i, j) takes source pixel (floor(i·H/h), floor(j·W/w)),
PyTorch's "nearest" rule. The sizes are chosen so that H/h and W/w are exact in float32 (dyadic ratios),
where PyTorch's float index arithmetic and the integer formula agree.
"""
import pytest
import torch

from ldvc_d2.modeling.c2s.mining import pseudo_mask
from ldvc_d2.modeling.deop.weights import read_oracle_label
from ldvc_d2.modeling.label_ops import resize_labels_nearest

SIZES = [((12, 10), (8, 4)), ((4, 6), (8, 24)), ((6, 4), (6, 4)), ((3, 5), (12, 10))]


def _gather(labels: torch.Tensor, size) -> torch.Tensor:
    (big_h, big_w), (h, w) = labels.shape[-2:], size
    rows = torch.tensor([i * big_h // h for i in range(h)])
    cols = torch.tensor([j * big_w // w for j in range(w)])
    return labels[..., rows[:, None], cols[None, :]]


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("src,dst", SIZES)
def test_resize_labels_nearest_is_a_gather_and_keeps_the_dtype(dtype, src, dst):
    torch.manual_seed(0)
    labels = torch.randint(0, 2 if dtype == torch.bool else 256, (2, *src)).to(dtype)
    out = resize_labels_nearest(labels, dst)
    assert out.dtype == dtype and out.shape == (2, *dst)
    assert torch.equal(out, _gather(labels, dst))


def test_large_label_values_survive_the_float_round_trip():
    labels = torch.tensor([[[2 ** 24 - 1, -(2 ** 24) + 1], [255, -1]]], dtype=torch.long)
    assert torch.equal(resize_labels_nearest(labels, (4, 4)), _gather(labels, (4, 4)))


def test_c2s_pseudo_mask_reads_latent_classes_by_nearest_upsampling():
    torch.manual_seed(1)
    targets = torch.randint(0, 3, (2, 12, 10))
    targets[:, 4:, :6] = 255
    valid = torch.ones_like(targets, dtype=torch.bool)
    valid[1, -2:] = False
    latent = torch.randint(-1, 2, (2, 3, 5))
    up = _gather(latent, (12, 10))
    want = torch.where((targets == 255) & valid & (up >= 0), 3 + up, targets)
    assert torch.equal(pseudo_mask(targets, latent, valid, num_seen=3, ignore_label=255), want)


@pytest.mark.parametrize("dtype", [torch.long, torch.uint8])
def test_deop_oracle_label_is_resized_to_the_image(dtype):
    torch.manual_seed(2)
    label = torch.randint(0, 256, (6, 4)).to(dtype)
    out = read_oracle_label({"image": torch.zeros(3, 12, 8), "sem_seg": label}, ignore_label=255)
    assert out.dtype == torch.long and torch.equal(out, _gather(label[None], (12, 8))[0].long())
    same = read_oracle_label({"image": torch.zeros(3, 6, 4), "sem_seg": label}, ignore_label=255)
    assert torch.equal(same, label.long())
