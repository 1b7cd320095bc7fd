"""The app in a real browser (headless Chromium): upload, vocabulary, two methods, downloads, bad input.

One server for the module (``python -m ldvc_d2.app`` on a free port) offering CLIPtrase on the shapes CLIP
and LDVC (configs/demo.yaml) with a checkpoint of seeded random weights written here, so the test needs no
training. Without Chromium the tests skip with the install command; under CI=true they fail.
"""
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from ldvc_d2.predictor import load_config
from tests import browser
from tests.conftest import REPO
from tests.scripts import load_script

NAMES = ["plain red shape", "striped blue shape", "dotted green shape", "checkered yellow shape", "plain blue shape"]
METHODS = {"CLIPtrase": ("configs/cliptrase/shapes.yaml", ""), "LDVC": ("configs/demo.yaml", None)}


@pytest.fixture(scope="module")
def paths():
    return browser.require_browser()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """An LDVC checkpoint of the demo config with its own seeded random prompts and decoder."""
    torch.manual_seed(5)
    model = build_model(load_config(os.path.join(REPO, "configs/demo.yaml")))
    path = str(tmp_path_factory.mktemp("ldvc") / "model_final.pth")
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def app(paths, weights, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("app") / "app.log")
    specs = [f"{name}={config}" + (f"@{weights}" if w is None else "") for name, (config, w) in METHODS.items()]
    proc, url = browser.start_app([a for s in specs for a in ("--method", s)], log)
    driver = browser.make_driver(paths)
    try:
        browser.open_page(driver, url)
        yield driver, proc, browser.files_folder(log)
    finally:
        driver.quit()
        browser.stop_app(proc)
    assert not os.path.exists(browser.files_folder(log)), "the server left its files behind"


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from ldvc_d2.benchmarks.shapes.world import render_scene

    image = render_scene(np.random.default_rng(11), [0, 5, 10, 15], 128)[0]
    path = tmp_path_factory.mktemp("images") / "scene.png"
    Image.fromarray(image).save(path)
    return str(path)


def _demo_labels(image_file: str, config: str, weights: str, out_dir) -> np.ndarray:
    """The label map demo/demo.py writes for the image, config and vocabulary."""
    argv = ["--config-file", config, "--input", image_file, "--output", str(out_dir), "--classes", ", ".join(NAMES)]
    assert load_script("demo/demo.py").main(argv + (["--opts", "MODEL.WEIGHTS", weights] if weights else [])) == 0
    return np.array(Image.open(out_dir / "scene_labels.png"))


def test_label_maps_downloaded_from_the_page_equal_the_demo_scripts(app, image_file, weights, tmp_path):
    driver, _, _ = app
    browser.upload(driver, image_file)
    assert browser.status(driver) == "Image 'scene.png' (128x128) is ready."
    browser.set_vocabulary(driver, ", ".join(NAMES))
    browser.choose_methods(driver, list(METHODS))
    assert browser.run(driver).startswith("Segmented 'scene.png' (128x128) into 5 classes with 2 method(s).")
    for index, (name, (config, w)) in enumerate(METHODS.items()):
        header = browser.slot_header(driver, index)
        assert name in header and config in header and " s" in header
        assert (weights in header) if w is None else ("training-free" in header)
        page = np.array(Image.open(io.BytesIO(browser.download_labels(driver, index))))
        expected = _demo_labels(image_file, os.path.join(REPO, config), weights if w is None else "",
                                tmp_path / name)
        assert page.dtype == np.uint8 and page.shape == (128, 128)
        assert np.array_equal(page, expected), f"{name}: {np.mean(page != expected):.3f} of the pixels differ"


def test_bad_requests_show_messages_and_the_server_keeps_serving(app, image_file, tmp_path):
    driver, proc, folder = app
    browser.upload(driver, image_file)
    browser.set_vocabulary(driver, "")
    browser.choose_methods(driver, ["CLIPtrase"])
    message = browser.run(driver, start="Error")
    assert "The vocabulary is empty" in message
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    browser.upload(driver, str(text))
    message = browser.status(driver)
    assert message.startswith("Error") and "Cannot read image 'notes.png'" in message, message
    assert "Traceback" not in driver.page_source
    browser.upload(driver, image_file)
    browser.set_vocabulary(driver, "plain red shape, dotted green shape")
    browser.tick(driver, "want-scores")  # per-class score maps on demand
    assert browser.run(driver).startswith("Segmented 'scene.png' (128x128) into 2 classes with 1 method(s).")
    assert "CLIPtrase" in browser.slot_header(driver, 0) and proc.poll() is None
    assert browser.shows_image(driver, "scores-0") and not browser.shows_image(driver, "scores-1", 0.5)
    kept = [path.name for path in Path(folder).rglob("*") if path.is_file()]
    assert kept and not {"scene.png", "notes.png"} & set(kept), kept  # uploads are deleted once read
