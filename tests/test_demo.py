"""OpenVocabPredictor and demo/demo.py: the model's own inference, label maps, files, clear errors."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from ldvc_d2.predictor import (
    UNLABELED, OpenVocabPredictor, dataset_vocabulary, parse_class_list, read_vocabulary_file,
)
from ldvc_d2.utils import write_png_atomic
from tests.conftest import REPO, tiny_cfg
from tests.scripts import load_script

NAMES = ["plain red shape", "striped blue shape", "dotted green shape"]
CONFIG = os.path.join(REPO, "configs/demo.yaml")


@pytest.fixture(scope="module")
def demo():
    return load_script("demo/demo.py")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model with its own random weights (seed 1), saved as a Detectron2 checkpoint."""
    torch.manual_seed(1)
    model = build_model(tiny_cfg()).eval()
    for block in model.sem_seg_head.blocks:
        torch.nn.init.normal_(block.skip.weight, std=0.2)
    path = str(tmp_path_factory.mktemp("weights") / "model_final.pth")
    torch.save({"model": model.state_dict()}, path)
    return model, path


@pytest.fixture(scope="module")
def predictor(trained):
    torch.manual_seed(0)  # a different random init: the outputs below only match if the weights load
    return OpenVocabPredictor(tiny_cfg("configs/demo.yaml", "MODEL.WEIGHTS", trained[1]))


def _image(h=80, w=100, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_predictor_runs_the_models_inference_on_the_test_resize(trained, predictor):
    model, _ = trained
    rgb = _image()
    out = predictor(rgb[:, :, ::-1].copy(), NAMES)  # BGR in, as cv2.imread gives
    resized = T.ResizeShortestEdge(128, 512).get_transform(rgb).apply_image(rgb)  # configs/shapes: test size 128
    assert resized.shape[:2] == (128, 160)
    with torch.no_grad():
        ref = model([{"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": 80, "width": 100,
                      "class_names": NAMES}])[0]["sem_seg"]
    assert out["sem_seg"].shape == (3, 80, 100) and out["class_names"] == NAMES
    torch.testing.assert_close(out["sem_seg"], ref)
    assert torch.equal(out["labels"], ref.argmax(dim=0))


def test_threshold_seen_calibration_and_input_checks(trained, predictor):
    image = _image()
    scores = predictor(image, NAMES)["sem_seg"]
    threshold = float(scores.max(dim=0).values.median())
    labels = predictor(image, NAMES, score_threshold=threshold)["labels"]
    below = scores.max(dim=0).values < threshold
    assert below.any() and (labels[below] == UNLABELED).all() and (labels[~below] >= 0).all()
    calibrated = predictor(image, NAMES, seen_classes=[0])["sem_seg"]  # the demo config is inductive: 0.1
    torch.testing.assert_close(calibrated[0], scores[0] - 0.1, atol=1e-6, rtol=0)
    torch.testing.assert_close(calibrated[1:], scores[1:])
    grey = predictor(image[:, :, 0].copy(), NAMES)["sem_seg"]
    assert grey.shape == (3, 80, 100)
    with pytest.raises(ValueError, match=r"seen_classes \[5\]"):
        predictor(image, NAMES, seen_classes=[5])
    with pytest.raises(TypeError, match="uint8"):
        predictor(image.astype(np.float32), NAMES)


def test_class_name_errors_name_the_problem(tmp_path):
    assert parse_class_list(" cat, sofa ,lamp") == ["cat", "sofa", "lamp"]
    with pytest.raises(ValueError, match="class name 2 of 3 is empty"):
        parse_class_list("cat,,sofa")
    with pytest.raises(ValueError, match=r"1 \('cat'\) and 3 \('Cat'\) are the same name"):
        parse_class_list("cat,sofa,Cat ")
    with pytest.raises(ValueError, match="no class names"):
        OpenVocabPredictor.__call__(None, _image(), [])
    missing = str(tmp_path / "vocab.txt")
    with pytest.raises(FileNotFoundError, match="vocab.txt' does not exist"):
        read_vocabulary_file(missing)
    with open(missing, "w") as f:
        f.write("# my classes\ncat\n\nsofa\n  lamp  \n")
    assert read_vocabulary_file(missing) == ["cat", "sofa", "lamp"]
    with open(missing, "a") as f:
        f.write("sofa\n")
    with pytest.raises(ValueError, match="vocab.txt'.*'sofa'.*'sofa'"):
        read_vocabulary_file(missing)
    names, seen, colors = dataset_vocabulary("shapes_zs_val")
    assert len(names) == 16 and len(seen) == 12 and len(colors) == 16
    with pytest.raises(ValueError, match="'no_such_set' is not registered"):
        dataset_vocabulary("no_such_set")


def test_label_png_is_uint8_up_to_255_classes_else_uint16(demo, tmp_path):
    labels = np.array([[0, 254, UNLABELED]])
    small = demo.label_png(labels, 255)
    assert small.dtype == np.uint8 and small.tolist() == [[0, 254, 255]]
    labels = np.array([[0, 299, UNLABELED]])
    big = demo.label_png(labels, 300)
    assert big.dtype == np.uint16 and big.tolist() == [[0, 299, 65535]]
    write_png_atomic(str(tmp_path / "big.png"), big)
    with Image.open(tmp_path / "big.png") as im:
        assert np.array_equal(np.asarray(im), big)
    assert os.listdir(tmp_path) == ["big.png"]


def test_inputs_expand_and_clash(demo, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(_image(8, 8)).save(tmp_path / sub / "x.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    assert demo.expand_inputs([str(tmp_path / "a")]) == [str(tmp_path / "a" / "x.png")]
    assert demo.expand_inputs([str(tmp_path / "b" / "*.png")]) == [str(tmp_path / "b" / "x.png")]
    with pytest.raises(ValueError, match="would write the same outputs 'x_"):
        demo.expand_inputs([str(tmp_path / "a"), str(tmp_path / "b" / "x.png")])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        demo.expand_inputs([str(tmp_path / "nope.png")])
    with pytest.raises(ValueError, match="Cannot read image '.*notes.txt'"):
        demo.load_image(str(tmp_path / "a" / "notes.txt"))


def test_demo_writes_overlay_labels_scores(demo, trained, predictor, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    Image.fromarray(_image(80, 100, 1)).save(inputs / "one.png")
    Image.fromarray(_image(64, 48, 2)).save(inputs / "two.png")
    (inputs / "broken.png").write_bytes(b"not a png")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(NAMES) + "\n")
    rc = demo.main(["--config-file", CONFIG, "--input", str(inputs), "--output", str(out), "--vocabulary-file",
                    str(vocab), "--save-scores", "--opts", "MODEL.CLIP.PRETRAINED", "", "MODEL.WEIGHTS",
                    trained[1]])
    assert rc == 1  # broken.png could not be read; the others are done
    assert sorted(os.listdir(out)) == sorted(
        ["vocabulary.json"] + [f"{s}_{k}" for s in ("one", "two")
                               for k in ("overlay.png", "labels.png", "scores.npy", "scores.png")])
    for stem, (h, w), seed in (("one", (80, 100), 1), ("two", (64, 48), 2)):
        expected = predictor(_image(h, w, seed)[:, :, ::-1].copy(), NAMES)
        with Image.open(out / f"{stem}_labels.png") as im:
            assert im.mode == "L" and np.array_equal(np.asarray(im), expected["labels"].numpy())
        scores = np.load(out / f"{stem}_scores.npy")
        assert scores.dtype == np.float16 and scores.shape == (3, h, w)
        np.testing.assert_allclose(scores, expected["sem_seg"].numpy(), atol=1e-3)
        with Image.open(out / f"{stem}_overlay.png") as im:
            assert im.mode == "RGB" and im.height >= h and im.width > w  # image + legend panel
    with open(out / "vocabulary.json") as f:
        vocab_json = json.load(f)
    assert vocab_json["class_names"] == NAMES and vocab_json["unlabeled_value"] == 255
