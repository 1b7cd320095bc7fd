"""The harness post-processing shared by the training-free rooms (modeling/training_free.py) against a per-pixel
loop of SCLIP's ``postprocess_result``: softmax over all query words, a class takes its best word, SCLIP's area
threshold, and the probability threshold writing the dataset's background class (index 0 or 80)."""
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from ldvc_d2.modeling.training_free import QueryEmbeddings
from tests.conftest import TOY_CLASSES, tiny_cfg


def _model(*opts):
    torch.manual_seed(0)
    return build_model(tiny_cfg("configs/sclip/shapes.yaml", *opts)).eval()


def _loop_prediction(logits, owner, num_classes, background, thd, area):
    """Per-pixel loop of the harness: predicted class per pixel."""
    q, h, w = logits.shape
    probs = np.zeros((num_classes, h, w))
    for y in range(h):
        for x in range(w):
            e = np.exp(logits[:, y, x] - logits[:, y, x].max())
            p = e / e.sum()
            for c in range(num_classes):
                probs[c, y, x] = max(p[i] for i in range(q) if owner[i] == c)
    if area:
        arg = probs.argmax(0)
        fg = [c for c in range(num_classes) if c != background]
        total = sum((arg == c).sum() for c in fg)
        for c in fg:
            if not (arg == c).sum() > area * total:
                probs[c] = 0
    pred = probs.argmax(0)
    if thd:
        pred[probs.max(0) < thd] = background
    return pred


@pytest.mark.parametrize("background", [0, 4])
@pytest.mark.parametrize("thd,area", [(0.0, 0.0), (0.4, 0.0), (0.3, 0.2)])
def test_postprocess_prediction_equals_the_harness_loop(background, thd, area):
    model = _model()
    model.prob_threshold, model.area_threshold = thd, area
    owner = [0, 0, 1, 2, 3, 3, 3, 4]  # synonyms: class 0 has 2 words, class 3 has 3
    g = torch.Generator().manual_seed(background)
    logits = 3 * torch.randn(len(owner), 6, 7, generator=g)
    text = QueryEmbeddings(torch.zeros(len(owner), 4), torch.tensor(owner), 5, background)
    scores = model.postprocess(logits, text, {})
    assert scores.shape == (5, 6, 7)
    want = _loop_prediction(logits.double().numpy(), owner, 5, background, thd, area)
    np.testing.assert_array_equal(scores.argmax(0).numpy(), want)
    if thd:  # the threshold fired somewhere and wrote the background class, not index 0
        assert (want == background).any()


def test_background_words_and_name_sets_become_queries(tmp_path):
    model = _model()
    model.background_class, model.background_words = 1, ["sky", "wall"]
    text = model.encode_text(TOY_CLASSES)
    assert text.query_class.tolist() == [0, 1, 1, 2, 3, 4]
    torch.testing.assert_close(text.weights[1:3], model.text(["sky", "wall"]))
    names = tmp_path / "names.txt"
    names.write_text("# header\nred circle, round red\ngreen square\nblue star\nyellow triangle\nred square, red box\n")
    path = str(names)
    model = _model("MODEL.TRAINING_FREE.NAME_SET", path)
    text = model.encode_text(TOY_CLASSES)
    assert text.query_class.tolist() == [0, 0, 1, 2, 3, 4, 4]
    torch.testing.assert_close(text.weights[1], model.text(["round red"])[0])
    with pytest.raises(ValueError, match="NAME_SET has 5 lines"):
        model.encode_text(TOY_CLASSES[:3])


def test_threshold_without_a_background_class_is_refused():
    with pytest.raises(ValueError, match="PROB_THRESHOLD"):
        _model("MODEL.TRAINING_FREE.PROB_THRESHOLD", "0.2")  # shapes_zs_val has no background class


def test_inference_refines_with_pamr_at_the_output_size_before_the_softmax():
    """Window logits resized to the output size, PAMR guided by the input image at that size, then postprocess."""
    import torch.nn.functional as F

    from ldvc_d2.modeling.pamr import PAMR

    model = _model("MODEL.SEGMENTOR.INFERENCE.PAMR_STEPS", "2", "MODEL.SEGMENTOR.INFERENCE.PAMR_DILATIONS", "[1, 2]")
    image = torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    got = model([{"image": image, "class_names": TOY_CLASSES, "height": 96, "width": 80}])[0]["sem_seg"]
    with torch.no_grad():
        text = model.text_features(TOY_CLASSES)
        logits = model.batch_window_scores(model.preprocess(image), text)[0]
        logits = F.interpolate(logits[None], size=(96, 80), mode="bilinear", align_corners=False)
        guide = F.interpolate(((image.float() - model.pixel_mean) / model.pixel_std)[None], size=(96, 80),
                              mode="bilinear", align_corners=False)
        want = model.postprocess(PAMR(2, [1, 2])(guide, logits)[0], text, {})
    torch.testing.assert_close(got, want)
