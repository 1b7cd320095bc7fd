"""The shared segmentor's inference (DESIGN §1.4) against window positions and resizes written out by hand.

A stub method sees images whose channels hold the pixel coordinates (channel 0 = y, channel 1 = x,
channel 2 = 1 on real pixels, 0 on padding), records every window it is given and returns a known function
of them, so each expectation below is computed from the protocol's definition, not from the segmentor:
mmseg's grid (``ceil((size - crop) / stride) + 1`` windows per axis, the last one clamped to the edge),
padding on the bottom/right only, scores cropped back, overlaps averaged, and bilinear resizes
(``align_corners=False``: output pixel i samples the input at ``(i + 0.5) * in / out - 0.5``, clamped).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from ldvc_d2.modeling.segmentor import ZeroShotSegmentor
from tests.conftest import tiny_cfg

PAD_SCORE = 1e6  # what the stub scores padding with: must never reach the output


class CoordinateStub(ZeroShotSegmentor):
    """Scores: 0 = the global y of each pixel, 1 = the window's origin y1 + 1000 x1 (constant per window),
    2 = PAD_SCORE on padded pixels (0 on real ones). Records (y1, x1, real h, real w, padded H, padded W)."""

    def __init__(self, **kw):
        defaults = dict(train_class_names=None, train_class_ids=None, test_class_names=["a", "b", "c"],
                        pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0])
        super().__init__(**{**defaults, **kw})
        self.windows = []
        self.eval()

    def encode_text(self, class_names):
        return torch.zeros(len(class_names), 4)

    def _one(self, window):
        _, hp, wp = window.shape
        assert hp % self.pad_multiple == 0 and wp % self.pad_multiple == 0, (hp, wp)
        real = window[2] > 0.5
        h, w = int(real[:, 0].sum()), int(real[0].sum())
        assert real[:h, :w].all() and not real[h:].any() and not real[:, w:].any(), "padding not bottom/right"
        y1, x1 = int(window[0, 0, 0]), int(window[1, 0, 0])
        self.windows.append((y1, x1, h, w, hp, wp))
        origin = torch.full((hp, wp), float(y1 + 1000 * x1))
        return torch.stack([torch.where(real, window[0], torch.tensor(PAD_SCORE)),
                            torch.where(real, origin, torch.tensor(PAD_SCORE)), (~real).float() * PAD_SCORE])

    def window_scores(self, images, text):
        scores = torch.stack([self._one(w) for w in images])
        return scores[0] if len(images) == 1 else scores


class BatchedStub(CoordinateStub):
    """The same scores from a method that scores a batch of windows in one pass; records the batch sizes."""

    def batch_window_scores(self, images, text):
        self.batches.append(len(images))
        return torch.stack([self._one(w) for w in images])


STUBS = [(CoordinateStub, 1), (BatchedStub, 4)]  # (method, MODEL.SEGMENTOR.INFERENCE.WINDOW_BATCH)


def _stub(cls, window_batch, **kw):
    model = cls(window_batch=window_batch, **kw)
    model.batches = []
    return model


def coordinate_image(h, w):
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([ys, xs, torch.ones(h, w)])


def expected_slide(h, w, windows):
    """Channel 1's average over the hand-written windows (y1, x1, wh, ww) covering each pixel."""
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for y1, x1, wh, ww in windows:
        total[y1:y1 + wh, x1:x1 + ww] += y1 + 1000 * x1
        count[y1:y1 + wh, x1:x1 + ww] += 1
    assert count.min() >= 1
    return torch.tensor(total / count, dtype=torch.float32)


def _run(model, h, w, **extra):
    model.windows = []
    return model([{"image": coordinate_image(h, w), **extra}])[0]["sem_seg"]


@pytest.mark.parametrize("stub,window_batch", STUBS)
@pytest.mark.parametrize("pad", [16, 24])
def test_slide_windows_100x150_crop_64_stride_48(pad, stub, window_batch):
    """rows: ceil(36 / 48) + 1 = 2 at y 0 and min(48, 36) = 36; cols: ceil(86 / 48) + 1 = 3 at x 0, 48 and
    min(96, 86) = 86. Every window is 64x64, padded to the next multiple of ``pad`` (64 or 72)."""
    model = _stub(stub, window_batch, crop_size=64, stride=48, pad_multiple=pad)
    out = _run(model, 100, 150)
    assert all(b <= window_batch for b in model.batches) and sum(model.batches) == (6 if stub is BatchedStub else 0)
    windows = [(y, x, 64, 64) for y in (0, 36) for x in (0, 48, 86)]
    padded = 64 if pad == 16 else 72
    assert sorted(model.windows) == sorted((y, x, hh, ww, padded, padded) for y, x, hh, ww in windows)
    assert out.shape == (3, 100, 150) and torch.isfinite(out).all()
    torch.testing.assert_close(out[0], coordinate_image(100, 150)[0])  # each window's scores land where it was cut
    torch.testing.assert_close(out[1], expected_slide(100, 150, windows))
    assert (out[2] == 0).all()  # padding cropped off before averaging


def test_slide_on_an_image_narrower_than_the_crop_in_one_direction():
    """50x150: one row of windows, each the full 50 px high (padded to 64 with pad 16), x at 0, 48, 86."""
    model = CoordinateStub(crop_size=64, stride=48, pad_multiple=16)
    out = _run(model, 50, 150)
    windows = [(0, x, 50, 64) for x in (0, 48, 86)]
    assert sorted(model.windows) == [(0, x, 50, 64, 64, 64) for x in (0, 48, 86)]
    torch.testing.assert_close(out[1], expected_slide(50, 150, windows))
    assert (out[2] == 0).all()


@pytest.mark.parametrize("stub,window_batch", STUBS)
def test_a_batch_of_images_gives_each_its_own_windows(stub, window_batch):
    """Three images in one call (sizes 100x150, 50x150, 100x150): each output is that image's own average,
    whatever windows share a forward pass."""
    model = _stub(stub, window_batch, crop_size=64, stride=48, pad_multiple=16)
    sizes = [(100, 150), (50, 150), (100, 150)]
    outs = model([{"image": coordinate_image(h, w)} for h, w in sizes])
    tall = [(y, x, 64, 64) for y in (0, 36) for x in (0, 48, 86)]
    for (h, w), out, windows in zip(sizes, outs, [tall, [(0, x, 50, 64) for x in (0, 48, 86)], tall]):
        assert out["sem_seg"].shape == (3, h, w)
        torch.testing.assert_close(out["sem_seg"][0], coordinate_image(h, w)[0])
        torch.testing.assert_close(out["sem_seg"][1], expected_slide(h, w, windows))
        assert (out["sem_seg"][2] == 0).all()
    assert len(model.windows) == 15


@pytest.mark.parametrize("stub,window_batch", STUBS)
def test_an_image_inside_one_window_gets_that_windows_scores(stub, window_batch):
    """A 40x57 image is one 64-px window (its scores are the average, taken without summing): cropped back to
    40x57, equal to the same image run alone, and calibrating it leaves the images beside it alone, also
    when its window shares a forward pass with theirs."""
    kw = dict(crop_size=64, stride=48, pad_multiple=16, calibration=0.5, test_seen_classes=[1])
    sizes = [(100, 150), (40, 57), (100, 150)]
    outs = _stub(stub, window_batch, **kw)([{"image": coordinate_image(h, w)} for h, w in sizes])
    alone = [_run(_stub(stub, window_batch, **kw), h, w) for h, w in sizes]
    for out, ref in zip(outs, alone):
        torch.testing.assert_close(out["sem_seg"], ref, rtol=0, atol=0)
    small = outs[1]["sem_seg"]
    assert small.shape == (3, 40, 57) and (small[2] == 0).all()
    torch.testing.assert_close(small[0], coordinate_image(40, 57)[0])
    torch.testing.assert_close(small[1], torch.full((40, 57), -0.5))  # window origin 0, calibrated once


def test_slide_when_the_stride_fits_exactly_adds_no_extra_window():
    """128 wide, crop 64, stride 32: ceil(64 / 32) + 1 = 3 windows at x 0, 32, 64 (no fourth clamped one)."""
    model = CoordinateStub(crop_size=64, stride=32, pad_multiple=8)
    out = _run(model, 64, 128)
    assert sorted(model.windows) == [(0, x, 64, 64, 64, 64) for x in (0, 32, 64)]
    torch.testing.assert_close(out[1], expected_slide(64, 128, [(0, x, 64, 64) for x in (0, 32, 64)]))


@pytest.mark.parametrize("h,w", [(100, 150), (40, 57)])
def test_whole_image_pads_bottom_right_and_crops_back(h, w):
    """One pass on the image padded to multiples of 16 (112x160, 48x64), cropped back to h x w."""
    model = CoordinateStub(inference_mode="whole", pad_multiple=16)
    out = _run(model, h, w)
    assert model.windows == [(0, 0, h, w, -(-h // 16) * 16, -(-w // 16) * 16)]
    assert out.shape == (3, h, w)
    torch.testing.assert_close(out[0], coordinate_image(h, w)[0])
    assert (out[2] == 0).all()


def _bilinear_positions(n_in, n_out):
    """Sampling positions of a bilinear resize with align_corners=False (half-pixel centres, clamped)."""
    return np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)


def test_final_resize_to_height_width_is_bilinear():
    """Channel 0 is y, linear in the pixel position, so a bilinear resize gives y at each sampling position
    exactly; channel 1 is constant per window (piecewise), not checked here."""
    model = CoordinateStub(inference_mode="whole", pad_multiple=16)
    out = _run(model, 40, 57, height=97, width=31)
    assert out.shape == (3, 97, 31)
    ref = torch.tensor(_bilinear_positions(40, 97), dtype=torch.float32)[:, None].expand(97, 31)
    torch.testing.assert_close(out[0], ref, atol=1e-4, rtol=0)
    down = _run(CoordinateStub(inference_mode="whole", pad_multiple=16), 100, 150, height=30, width=45)
    ref = torch.tensor(_bilinear_positions(100, 30), dtype=torch.float32)[:, None].expand(30, 45)
    torch.testing.assert_close(down[0], ref, atol=1e-4, rtol=0)


def test_decoder_window_scores_upsample_patch_logits_bilinearly():
    """CLIPDecoderSegmentor.window_scores: the head's B×C×h×w logits × patch size, bilinear, sigmoid. With
    logits linear in the patch row/column, the result is sigmoid of that linear function at the sampling
    positions (a nearest or align_corners=True resize gives other values)."""
    model = build_model(tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()")).eval()
    patch = model.backbone.size_divisibility
    gh, gw = 4, 6
    rows = torch.arange(gh, dtype=torch.float32)[:, None].expand(gh, gw)
    cols = torch.arange(gw, dtype=torch.float32)[None].expand(gh, gw)
    model.logits = lambda images, text: torch.stack([0.3 * rows - 0.5, 0.2 * cols - 0.4])[None]
    scores = model.window_scores(torch.zeros(1, 3, gh * patch, gw * patch), torch.zeros(2, 8))
    assert scores.shape == (2, gh * patch, gw * patch)
    ys = torch.tensor(_bilinear_positions(gh, gh * patch), dtype=torch.float32)[:, None].expand(-1, gw * patch)
    xs = torch.tensor(_bilinear_positions(gw, gw * patch), dtype=torch.float32)[None].expand(gh * patch, -1)
    torch.testing.assert_close(scores[0], torch.sigmoid(0.3 * ys - 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(scores[1], torch.sigmoid(0.2 * xs - 0.4), atol=1e-5, rtol=0)


def test_calibration_subtracts_from_the_seen_classes_only():
    model = CoordinateStub(inference_mode="whole", pad_multiple=16, calibration=0.5, test_seen_classes=[1])
    plain = CoordinateStub(inference_mode="whole", pad_multiple=16)
    a, b = _run(model, 40, 57, height=20, width=30), _run(plain, 40, 57, height=20, width=30)
    torch.testing.assert_close(a[1], b[1] - 0.5)
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]])
