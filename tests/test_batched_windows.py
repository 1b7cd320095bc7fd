"""Batched sliding windows (MODEL.SEGMENTOR.INFERENCE.WINDOW_BATCH): the same scores as one window per
forward pass, with the windows grouped as documented (consecutive, equal size and vocabulary, at most N)."""
import pytest
import torch
from detectron2.modeling import build_model

from ldvc_d2.modeling.windows import consecutive_chunks, slide_boxes
from tests.conftest import registered_toy_dataset, tiny_cfg

CONFIGS = {"LDVC": "configs/demo.yaml", "ZegCLIP": "configs/shapes/zegclip.yaml"}


@pytest.fixture(scope="module")
def toy_dataset():
    with registered_toy_dataset("ldvc_test_batched_windows") as name:
        yield name


def _model(dataset, method, *opts):
    cfg = tiny_cfg(CONFIGS[method], "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)",
                   "MODEL.SEGMENTOR.INFERENCE.CROP_SIZE", "64", "MODEL.SEGMENTOR.INFERENCE.STRIDE", "40", *opts)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _inputs():
    """Two 64×150 images (4 windows each at x 0, 40, 80 and the clamped 86), then a 48×100 image with its
    own vocabulary (2 windows of 48×64 at x 0 and the clamped 36), output resized for the last one."""
    g = torch.Generator().manual_seed(1)
    image = lambda h, w: torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)  # noqa: E731
    return [{"image": image(64, 150)}, {"image": image(64, 150)},
            {"image": image(48, 100), "class_names": ["lamp", "cat"], "height": 30, "width": 70}]


def _record_batch_sizes(model):
    sizes, logits = [], model.logits
    model.logits = lambda images, text: sizes.append(images.shape[0]) or logits(images, text)
    return sizes


def test_mmseg_grid_with_clamped_last_windows():
    assert slide_boxes(64, 150, 64, 40) == [(0, 64, x, x + 64) for x in (0, 40, 80, 86)]
    assert slide_boxes(48, 100, 64, 40) == [(0, 48, 0, 64), (0, 48, 36, 100)]
    assert slide_boxes(100, 100, 64, 40) == [(y, y + 64, x, x + 64) for y in (0, 36) for x in (0, 36)]


def test_consecutive_chunks_keep_order_and_split_on_key_and_limit():
    items = [("a", 1), ("a", 2), ("a", 3), ("b", 4), ("a", 5)]
    chunks = list(consecutive_chunks(items, key=lambda t: t[0], limit=2))
    assert chunks == [[("a", 1), ("a", 2)], [("a", 3)], [("b", 4)], [("a", 5)]]


@pytest.mark.parametrize("method", ["LDVC", "ZegCLIP"])
def test_batched_windows_equal_one_by_one(toy_dataset, method):
    one = _model(toy_dataset, method, "MODEL.SEGMENTOR.INFERENCE.WINDOW_BATCH", "1")
    sizes_one = _record_batch_sizes(one)
    reference = one(_inputs())
    assert sizes_one == [1] * 10
    for n, expected in ((8, [8, 2]), (3, [3, 3, 2, 2]), (0, [1] * 10)):
        model = _model(toy_dataset, method, "MODEL.SEGMENTOR.INFERENCE.WINDOW_BATCH", str(n))
        sizes = _record_batch_sizes(model)
        outputs = model(_inputs())
        assert sizes == expected, (n, sizes)
        for out, ref in zip(outputs, reference):
            assert out["sem_seg"].shape == ref["sem_seg"].shape and out["sem_seg"].dtype == torch.float32
            torch.testing.assert_close(out["sem_seg"], ref["sem_seg"], atol=1e-5, rtol=0)


def test_batched_whole_image_passes_equal_one_by_one(toy_dataset):
    """Whole-image mode: equal-size images share a pass, another size gets its own."""
    opts = ("MODEL.SEGMENTOR.INFERENCE.MODE", "whole")
    one = _model(toy_dataset, "LDVC", *opts, "MODEL.SEGMENTOR.INFERENCE.WINDOW_BATCH", "1")
    batched = _model(toy_dataset, "LDVC", *opts)
    sizes = _record_batch_sizes(batched)
    for out, ref in zip(batched(_inputs()), one(_inputs())):
        torch.testing.assert_close(out["sem_seg"], ref["sem_seg"], atol=1e-5, rtol=0)
    assert sizes == [2, 1]


def test_window_batch_must_not_be_negative():
    from ldvc_d2.config import validate_config

    with pytest.raises(ValueError, match="MODEL.SEGMENTOR.INFERENCE.WINDOW_BATCH is -1"):
        validate_config(tiny_cfg("configs/demo.yaml", "MODEL.SEGMENTOR.INFERENCE.WINDOW_BATCH", "-1"), training=False)


def test_per_window_methods_get_one_window_per_call(toy_dataset):
    """CLIPtrase clusters each window on its own (DBSCAN): it keeps the default batch_window_scores, which
    hands window_scores one 1×3×H×W window at a time, whatever WINDOW_BATCH is."""
    cfg = tiny_cfg("configs/cliptrase/shapes.yaml", "DATASETS.TEST", f"('{toy_dataset}',)", "MODEL.SEGMENTOR.INFERENCE.MODE",
                   "slide", "MODEL.SEGMENTOR.INFERENCE.CROP_SIZE", "64", "MODEL.SEGMENTOR.INFERENCE.STRIDE", "40")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    shapes, score = [], model.window_scores
    model.window_scores = lambda images, text: shapes.append(tuple(images.shape)) or score(images, text)
    batched = model(_inputs()[:2])
    assert model.window_batch == 8 and shapes == [(1, 3, 64, 64)] * 8
    model.window_batch = 1
    for out, ref in zip(batched, model(_inputs()[:2])):
        torch.testing.assert_close(out["sem_seg"], ref["sem_seg"], atol=0, rtol=0)
