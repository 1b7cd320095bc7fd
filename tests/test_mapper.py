"""Training/test mappers: augmentation keeps image and label aligned; bad labels are named."""
import numpy as np
import pytest
import torch
from PIL import Image

from ldvc_d2.data import LDVCTestMapper, LDVCTrainMapper
from ldvc_d2.data.mapper import RandomScaleResize, read_label
from tests.conftest import tiny_cfg


def _write(tmp_path, label: np.ndarray, mode: str = "L"):
    h, w = label.shape
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = label * 10  # the red channel encodes the class: alignment is checkable after augmentation
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(label if mode == "L" else np.stack([label] * 3, -1), mode="L" if mode == "L" else "RGB").save(tmp_path / "lab.png")
    return {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "lab.png")}


def _mapper(**kw):
    cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", "()", "INPUT.PHOTOMETRIC_DISTORTION", "False")
    return LDVCTrainMapper(cfg, True) if not kw else LDVCTrainMapper(augmentations=[], **kw)


def test_training_augmentation_keeps_labels_aligned(tmp_path):
    label = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4), np.ones((40, 40), np.uint8))
    d = _write(tmp_path, label)
    np.random.seed(0)
    for _ in range(5):
        out = _mapper()(d)
        img, lab = out["image"], out["sem_seg"]
        assert img.shape[1:] == lab.shape == (out["height"], out["width"]) and lab.shape[0] <= 128
        pad = torch.nn.functional.pad(lab[None, None].float(), (1, 1, 1, 1), mode="replicate")
        uniform = (torch.nn.functional.max_pool2d(pad, 3, 1) == -torch.nn.functional.max_pool2d(-pad, 3, 1))[0, 0]
        assert uniform.float().mean() > 0.5  # away from class boundaries, where resizing blends
        diff = (img[0].long() - lab.long() * 10)[uniform].abs()
        assert diff.max() <= 1


def test_random_scale_resize_fits_the_reference_scale():
    np.random.seed(1)
    aug = RandomScaleResize((2048, 512), (0.5, 2.0))
    for _ in range(20):
        t = aug.get_transform(np.zeros((375, 500, 3), np.uint8))
        r_long, r_short = t.new_w / 2048, t.new_h / 512
        assert 0.5 - 1e-2 <= max(r_long, r_short) <= 2.0 + 1e-2
        assert abs(t.new_w / t.new_h - 500 / 375) < 0.01


def test_label_values_outside_the_classes_name_the_file(tmp_path):
    d = _write(tmp_path, np.full((8, 8), 20, np.uint8))
    with pytest.raises(ValueError, match=r"lab.png' has values \[20\] outside 0..15"):
        _mapper(num_classes=16)(d)
    d = _write(tmp_path, np.full((8, 8), 3, np.uint8), mode="RGB")
    with pytest.raises(ValueError, match="is a RGB image; labels must be single-channel"):
        read_label(d["sem_seg_file_name"])


def test_test_mapper_attaches_the_vocabulary(tmp_path):
    d = _write(tmp_path, np.zeros((64, 96), np.uint8))
    out = LDVCTestMapper(tiny_cfg("configs/demo.yaml"), "shapes_zs_val")(d)
    assert out["image"].shape == (3, 128, 192) and (out["height"], out["width"]) == (64, 96)
    assert len(out["class_names"]) == 16 and len(out["seen_classes"]) == 12
