"""Training/test mappers: augmentation keeps image and label aligned; bad labels are named."""
import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from ldvc_d2.data import LDVCTestMapper, LDVCTrainMapper
from ldvc_d2.data.mapper import PhotometricDistortion, RandomScaleResize, photometric_distortion
from ldvc_d2.utils.io import read_label
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


# --- mmseg's PhotoMetricDistortion, step by step against hand computations -------------------------

def _px(*rgb):
    return np.array([[rgb]], np.uint8)


def _hsv8(rgb):
    """OpenCV's 8-bit HSV by hand (colorsys): H in 0..179 (degrees / 2), S and V in 0..255."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    return round(h * 180) % 180, round(s * 255), round(v * 255)


def _rgb8(h, s, v):
    return [round(c * 255) for c in colorsys.hsv_to_rgb(h / 180, s / 255, v / 255)]


def test_brightness_and_contrast_clip_and_truncate_after_each_step():
    img = _px(250, 10, 100)
    out = photometric_distortion(img, brightness=30.7, contrast=None, contrast_first=True, saturation=None, hue=None)
    assert out[0, 0].tolist() == [255, 40, 130]  # clip at 255, float -> uint8 truncates (40.7 -> 40)
    # brightness then contrast: 250 + 30 is clipped to 255 *before* x0.5 (unclipped it would give 140)
    out = photometric_distortion(img, brightness=30.0, contrast=0.5, contrast_first=True, saturation=None, hue=None)
    assert out[0, 0].tolist() == [127, 20, 65]
    out = photometric_distortion(_px(200, 3, 90), brightness=-5.0, contrast=1.4, contrast_first=False,
                                 saturation=None, hue=None)
    assert out[0, 0].tolist() == [255, 0, 119]  # 3 - 5 clipped to 0; 195 * 1.4 clipped to 255; 85 * 1.4 = 119


def test_saturation_scales_s_in_opencv_hsv_and_clips():
    for rgb, alpha in (((200, 100, 100), 1.5), ((40, 180, 90), 0.5), ((200, 100, 100), 2.5)):
        h, s, v = _hsv8(rgb)
        expected = _rgb8(h, min(int(s * alpha), 255), v)
        out = photometric_distortion(_px(*rgb), brightness=None, contrast=None, contrast_first=True,
                                     saturation=alpha, hue=None)
        assert np.abs(out[0, 0].astype(int) - expected).max() <= 2, (rgb, alpha, out[0, 0], expected)
    out = photometric_distortion(_px(200, 100, 100), brightness=None, contrast=None, contrast_first=True,
                                 saturation=2.5, hue=None)
    assert out[0, 0, 1] <= 1  # S clipped to 255 = fully saturated red


@pytest.mark.parametrize("rgb,delta", [((255, 0, 0), -18), ((255, 0, 85), 17), ((20, 200, 60), 11)])
def test_hue_shift_wraps_around_opencvs_180(rgb, delta):
    """Pure red (H 0) - 18 -> 162; H 170 + 17 = 187 -> 7 (a clipped hue would stay near 179, magenta)."""
    h, s, v = _hsv8(rgb)
    expected = _rgb8((h + delta) % 180, s, v)
    out = photometric_distortion(_px(*rgb), brightness=None, contrast=None, contrast_first=True,
                                 saturation=None, hue=delta)
    assert np.abs(out[0, 0].astype(int) - expected).max() <= 2, (out[0, 0], expected)


def test_contrast_position_and_uint8_only():
    # contrast before or after a saturation change gives different images (the order is mmseg's coin)
    img = _px(200, 100, 100)
    first, last = (photometric_distortion(img, brightness=None, contrast=1.5, contrast_first=f, saturation=0.5,
                                          hue=None) for f in (True, False))
    h, s, v = _hsv8((255, 150, 150))  # contrast first: (300, 150, 150) clipped
    assert np.abs(first[0, 0].astype(int) - _rgb8(h, int(s * 0.5), v)).max() <= 2
    h, s, v = _hsv8((200, 100, 100))
    assert np.abs(last[0, 0].astype(int) - [min(int(c * 1.5), 255) for c in _rgb8(h, int(s * 0.5), v)]).max() <= 2
    with pytest.raises(ValueError, match="needs a uint8 image"):
        photometric_distortion(img.astype(np.float32), brightness=1.0, contrast=None, contrast_first=True,
                               saturation=None, hue=None)


def _mmseg_draws(rng):
    """mmseg's PhotoMetricDistortion.__call__ draw order (numpy.random), written out: brightness, mode,
    contrast if mode 1, saturation, hue, contrast if mode 0; each step: coin randint(2), then its value."""
    b = rng.uniform(-32, 32) if rng.randint(2) else None
    mode = rng.randint(2)
    c = (rng.uniform(0.5, 1.5) if rng.randint(2) else None) if mode == 1 else None
    s = rng.uniform(0.5, 1.5) if rng.randint(2) else None
    h = rng.randint(-18, 18) if rng.randint(2) else None
    if mode == 0:
        c = rng.uniform(0.5, 1.5) if rng.randint(2) else None
    return dict(brightness=b, contrast=c, contrast_first=mode == 1, saturation=s, hue=h)


def test_photometric_distortion_draws_as_mmseg():
    aug, image = PhotometricDistortion(), np.zeros((4, 4, 3), np.uint8)
    np.random.seed(7)
    ours = [aug.get_transform(image).op.keywords for _ in range(400)]
    np.random.seed(7)
    reference = [_mmseg_draws(np.random) for _ in range(400)]
    assert ours == reference
    hues = [d["hue"] for d in ours if d["hue"] is not None]
    assert min(hues) == -18 and max(hues) == 17  # numpy's randint excludes the upper bound
    for key in ("brightness", "saturation", "hue"):
        assert 0.4 < np.mean([d[key] is not None for d in ours]) < 0.6
