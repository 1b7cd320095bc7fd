"""The app's request handling without a browser: uploads, vocabularies, methods, the model cache, errors."""
import io
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from ldvc_d2.app.__main__ import check_host
from ldvc_d2.app.inputs import InputError, Limits, parse_vocabulary, read_upload
from ldvc_d2.app.methods import Method, ModelCache, clip_weights_available, default_methods, parse_method
from ldvc_d2.app.page import _file_stem, segment
from ldvc_d2.predictor import OpenVocabPredictor, load_config
from tests.conftest import REPO

CLIPTRASE = Method("CLIPtrase", os.path.join(REPO, "configs/cliptrase/shapes.yaml"))
NAMES = ["plain red shape", "striped blue shape", "dotted green shape", "checkered yellow shape"]


def _png(array: np.ndarray) -> bytes:
    """PNG bytes (uint16 -> a 16-bit greyscale PNG, bool -> 1-bit)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    expected = {np.uint16: "I;16", np.bool_: "1"}.get(array.dtype.type)
    assert expected in (None, Image.open(io.BytesIO(buf.getvalue())).mode)
    return buf.getvalue()


def _upload(root, name: str, data: bytes) -> str:
    """A file where the web framework would put an upload: its own folder under ``root``."""
    folder = root / f"upload-{len(list(root.iterdir()))}"
    folder.mkdir()
    (folder / name).write_bytes(data)
    return str(folder / name)


def test_uploads_are_checked_decoded_and_deleted(tmp_path, monkeypatch):
    limits = Limits(max_bytes=4000, max_pixels=250_000, max_classes=10)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = _upload(tmp_path, "photo.png", _png(rgb))
    image, name = read_upload(path, limits, str(tmp_path))
    assert name == "photo.png" and np.array_equal(image, rgb)
    assert list(tmp_path.iterdir()) == []  # the file and its folder are gone
    # 16-bit greyscale: scaled to 8 bits (value / 257, rounded), not clipped to white
    grey16 = rng.integers(0, 65536, (10, 12), dtype=np.uint16)
    image, _ = read_upload(_upload(tmp_path, "deep.png", _png(grey16)), limits, str(tmp_path))
    assert np.array_equal(image[:, :, 1], np.floor(grey16 / 257.0 + 0.5).astype(np.uint8))
    bad = {
        "notes.png": (b"not an image at all", "Cannot read image 'notes.png'"),
        "cut.png": (_png(rgb)[:300], "Cannot read image 'cut.png'"),
        "big.png": (bytes(5000), "over the upload limit"),
    }
    for name, (data, message) in bad.items():
        path = _upload(tmp_path, name, data)
        with pytest.raises(InputError, match=message):
            read_upload(path, limits, str(tmp_path))
        assert not os.path.exists(path)
    # A small file declaring 1000x1000 pixels is refused from its header, before any pixel is decoded.
    path = _upload(tmp_path, "huge.png", _png(np.zeros((1000, 1000), bool)))
    assert os.path.getsize(path) < 4000

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with pytest.raises(InputError, match="1000x1000 = 1,000,000 pixels, over the limit of 250,000"):
        read_upload(path, limits, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_vocabulary_checks():
    assert parse_vocabulary(" cat, sofa ,lamp,", 5) == ["cat", "sofa", "lamp"]
    for text, message in [("", "vocabulary is empty"), ("  ", "vocabulary is empty"),
                          (", ".join(f"class {i}" for i in range(1000)), "1000 classes; this server takes at most 5"),
                          ("cat, Cat", "'cat'.*'Cat'.*same name"), ("cat,,sofa", "class name 2 of 3 is empty")]:
        with pytest.raises(InputError, match=message):
            parse_vocabulary(text, 5)


@pytest.fixture(scope="module")
def cache():
    return ModelCache("cpu")


def _scene(h=96, w=112, seed=3):
    from ldvc_d2.benchmarks.shapes.world import render_scene

    return render_scene(np.random.default_rng(seed), [0, 9, 6], max(h, w))[0][:h, :w].copy()


def test_segment_gives_the_models_labels_and_keeps_serving_after_bad_requests(tmp_path, cache):
    methods = [CLIPTRASE]
    image = (_scene(), "scene.png")
    for args, message in [((None, "cat", None, ["CLIPtrase"]), "No image"),
                          ((image, "", None, ["CLIPtrase"]), "vocabulary is empty"),
                          ((image, "cat", None, []), "No method chosen"),
                          ((image, "cat", None, ["../../etc/passwd"]), "Unknown method")]:
        status, results = segment(cache, methods, Limits(), str(tmp_path), *args, False)
        assert status.startswith("**Error:**") and message in status and results == [None]
    names = ", ".join(NAMES)
    status, results = segment(cache, methods, Limits(), str(tmp_path), (np.zeros((1, 1000, 3), np.uint8), "thin.png"),
                              names, None, ["CLIPtrase"], False)
    assert status.startswith("Segmented 'thin.png' (1000x1)") and results[0].labels.shape == (1, 1000)
    status, results = segment(cache, methods, Limits(), str(tmp_path), (np.zeros((1, 3000, 3), np.uint8), "thin.png"),
                              names, None, ["CLIPtrase"], False)  # the test resize would make it 0 pixels high
    assert "1 failed" in status and "too elongated" in results[0].error and results[0].overlay is None
    status, results = segment(cache, methods, Limits(), str(tmp_path), image, ", ".join(NAMES), None, ["CLIPtrase"],
                              True)
    assert status.startswith("Segmented 'scene.png' (112x96) into 4 classes") and not results[0].error
    # the label map PNG holds the predictor's arg-max labels (a predictor built apart from the app's cache)
    expected = OpenVocabPredictor(load_config(CLIPTRASE.config), input_format="RGB")(image[0], NAMES)["labels"]
    assert np.array_equal(np.array(Image.open(results[0].labels_file)), expected.numpy().astype(np.uint8))
    assert results[0].overlay.ndim == 3 and results[0].scores.ndim == 3
    assert "configs/cliptrase/shapes.yaml" in results[0].header and " s**" in results[0].header
    assert os.path.basename(results[0].labels_file) == "CLIPtrase_scene_labels.png"
    # a score threshold leaves pixels unlabelled: 255 in the PNG (sigmoid scores never reach 1)
    _, results = segment(cache, methods, Limits(), str(tmp_path), image, names, None, ["CLIPtrase"], False, 1.0)
    assert (np.array(Image.open(results[0].labels_file)) == 255).all()
    status, _ = segment(cache, methods, Limits(), str(tmp_path), image, "cat", None, ["CLIPtrase"], False, "lots")
    assert status.startswith("**Error:**") and "threshold must be a number" in status
    long_name = "example 1: a checkered red shape, a checkered blue shape and a plain yellow shape"
    assert _file_stem(long_name, "LDVC (shapes)") != _file_stem(long_name, "CLIPtrase (shapes)")


def test_a_checkpoint_that_does_not_fit_is_reported_and_not_kept(tmp_path, cache):
    bad = tmp_path / "zegclip_weights.pth"
    torch.save({"model": {"sem_seg_head.unrelated.weight": torch.zeros(3)}}, bad)
    methods = [Method("LDVC", os.path.join(REPO, "configs/demo.yaml"), str(bad)), CLIPTRASE]
    status, results = segment(cache, methods, Limits(), str(tmp_path), (_scene(), "s.png"), "cat, dog", None,
                              ["LDVC", "CLIPtrase"], False)
    assert "1 failed" in status and "could not be built" in results[0].error
    assert "sem_seg_head.unrelated.weight" in results[0].error and not results[1].error
    assert not cache.cached(methods[0]) and cache.cached(CLIPTRASE)


def test_models_are_built_once_and_text_embeddings_kept_for_a_bounded_number_of_vocabularies():
    cache = ModelCache("cpu", max_vocabularies=2)
    predictor = cache.get(CLIPTRASE)
    assert cache.get(Method("other name", CLIPTRASE.config)) is predictor  # same config + weights + device
    image = _scene(64, 64)
    for k, names in enumerate([["cat"], ["dog"], ["cat"], ["sofa"]]):
        cache.make_room(CLIPTRASE, names)
        predictor(image, names)
        cached = {key[0] for key in predictor.model._text_cache}
        assert cached == [{("cat",)}, {("cat",), ("dog",)}, {("cat",), ("dog",)}, {("sofa",)}][k]


def test_default_methods_offer_trained_models_whose_weights_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = tmp_path / "ldvc.yaml"
    config.write_text(f'_BASE_: "{REPO}/configs/demo.yaml"\nOUTPUT_DIR: "{tmp_path}/run"\n')
    configs = [("CLIPtrase", "configs/cliptrase/shapes.yaml"), ("LDVC", str(config)), ("gone", "configs/none.yaml")]
    assert default_methods(configs) == [Method("CLIPtrase", "configs/cliptrase/shapes.yaml", "")]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model_final.pth").write_bytes(b"")
    assert default_methods(configs)[1] == Method("LDVC", str(config), f"{tmp_path}/run/model_final.pth")


def test_real_clip_weights_count_as_available_only_when_cached(tmp_path):
    assert clip_weights_available("LDVC-Tiny", "shapes") and not clip_weights_available("LDVC-Tiny", "")
    assert not clip_weights_available("ViT-B-16", "openai", str(tmp_path))
    # the Hugging Face cache layout: models--<org>--<name>/refs/main -> snapshots/<commit>/<file>
    repo = tmp_path / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "open_clip_model.safetensors").write_bytes(b"")
    assert clip_weights_available("ViT-B-16", "openai", str(tmp_path))
    assert not clip_weights_available("ViT-L-14-336", "openai", str(tmp_path))


def test_server_options(tmp_path):
    check_host("127.0.0.1", False)
    check_host("localhost", False)
    check_host("0.0.0.0", True)
    with pytest.raises(SystemExit, match="--allow-remote"):
        check_host("0.0.0.0", False)
    assert parse_method(f"A={CLIPTRASE.config}") == Method("A", CLIPTRASE.config, "")
    with pytest.raises(FileNotFoundError, match="weights file"):
        parse_method(f"A={CLIPTRASE.config}@{tmp_path}/missing.pth")
    with pytest.raises(ValueError, match="NAME=CONFIG"):
        parse_method("configs/demo.yaml")


def test_the_page_builds(tmp_path):
    gr = pytest.importorskip("gradio", reason="the app's extra: pip install -e '.[app]'")
    from ldvc_d2.app.page import build_page

    page = build_page([CLIPTRASE], ModelCache("cpu"), Limits(), str(tmp_path), str(tmp_path))
    assert isinstance(page, gr.Blocks)
    ids = {getattr(block, "elem_id", None) for block in page.blocks.values()}
    assert {"upload", "vocabulary", "methods", "run", "status", "slot-0", "labels-0"} <= ids
