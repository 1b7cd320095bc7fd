"""Bad input found by trying the plugin as a careful user would: each gets a clear error naming the file
or key, or is handled correctly (16-bit greyscale, thin images in the demo)."""
import argparse
import os
import time

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from ldvc_d2.config import validate_config
from ldvc_d2.data import LDVCTestMapper, LDVCTrainMapper, register_zero_shot_folder
from ldvc_d2.data.image_io import read_image
from ldvc_d2.evaluation import ZeroShotSemSegEvaluator
from ldvc_d2.modeling.clip import build_clip_model
from ldvc_d2.modeling.clip import loading
from ldvc_d2.predictor import load_config, read_vocabulary_file
from tests.conftest import REPO, tiny_cfg
from tests.scripts import load_script

NAMES = ["road", "car", "sky"]


def _truncate(path) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


@pytest.fixture
def folder(tmp_path):
    """A registered 2-image folder set (40x48) 'bad_input_set'; removed afterwards."""
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 3, (40, 48), dtype=np.uint8)).save(tmp_path / "labels" / f"{i}.png")
    register_zero_shot_folder("bad_input_set", str(tmp_path / "images"), str(tmp_path / "labels"), NAMES, ["car"],
                              image_ext=".png")
    yield tmp_path, DatasetCatalog.get("bad_input_set")
    DatasetCatalog.remove("bad_input_set")
    MetadataCatalog.remove("bad_input_set")


def test_sixteen_bit_grey_is_scaled_not_clipped_to_white(tmp_path, folder):
    grey = np.random.default_rng(1).integers(0, 65536, (40, 48)).astype(np.uint16)
    path = str(tmp_path / "grey16.png")
    Image.fromarray(grey).save(path)
    expected = np.round(grey / 257.0).astype(np.uint8)
    rgb = read_image(path)
    assert rgb.shape == (40, 48, 3) and np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert np.array_equal(load_script("demo/demo.py").load_image(path)[..., 1], expected)
    root, dicts = folder
    os.replace(path, dicts[0]["file_name"])  # training and evaluation read it the same way
    mapped = LDVCTestMapper(tiny_cfg(), "bad_input_set")(dicts[0])
    assert mapped["image"].shape == (3, 128, 154) and 0 < mapped["image"].float().mean() < 200
    with pytest.raises(ValueError, match=r"Image '.*float_f32.tiff' is a F image with values outside 16-bit"):
        Image.fromarray(np.full((4, 4), -1.5, np.float32)).save(tmp_path / "float_f32.tiff")
        read_image(str(tmp_path / "float_f32.tiff"))


def test_mode_i_image_is_scaled_only_when_it_holds_16_bit_values(tmp_path):
    """Mode I says nothing about the bit depth: values up to 255 are 8-bit as they are, larger ones 16-bit."""
    rng = np.random.default_rng(2)
    for name, high, divisor in (("eight.tiff", 256, 1.0), ("sixteen.tiff", 65536, 257.0)):
        values = rng.integers(0, high, (6, 7)).astype(np.int32)
        values[0, 0] = high - 1
        Image.fromarray(values).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode == "I"
        rgb = read_image(str(tmp_path / name))
        assert np.array_equal(rgb[..., 1], np.round(values / divisor).astype(np.uint8)), name


def test_truncated_image_or_label_is_named_in_training_and_evaluation(folder):
    root, dicts = folder
    cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", "('bad_input_set',)")
    _truncate(dicts[0]["file_name"])
    for mapper in (LDVCTrainMapper(cfg, True), LDVCTestMapper(cfg, "bad_input_set")):
        with pytest.raises(ValueError, match=f"Cannot read image '{dicts[0]['file_name']}'.*truncated"):
            mapper(dicts[0])
    _truncate(dicts[1]["sem_seg_file_name"])
    with pytest.raises(ValueError, match=f"Cannot read label '{dicts[1]['sem_seg_file_name']}'.*truncated"):
        LDVCTrainMapper(cfg, True)(dicts[1])
    evaluator = ZeroShotSemSegEvaluator("bad_input_set", distributed=False)
    with pytest.raises(ValueError, match=f"Ground truth '{dicts[1]['sem_seg_file_name']}' cannot be read"):
        evaluator.process([{"file_name": dicts[1]["file_name"]}], [{"sem_seg": torch.zeros(3, 40, 48)}])


def test_wrong_size_label_in_evaluation_names_both_files(folder):
    root, dicts = folder
    Image.fromarray(np.zeros((41, 48), np.uint8)).save(dicts[0]["sem_seg_file_name"])
    with pytest.raises(ValueError, match=r"Label '.*0.png' is 48x41 but its image '.*0.png' is 48x40"):
        LDVCTestMapper(tiny_cfg(), "bad_input_set")(dicts[0])


def test_register_folder_messages():
    with pytest.raises(TypeError, match="class_names is the string 'road'; give a list"):
        register_zero_shot_folder("bad_reg", "i", "l", "road")
    with pytest.raises(ValueError, match=r"class names 0 \('Road'\) and 2 \('road'\) differ only in case"):
        register_zero_shot_folder("bad_reg", "i", "l", ["Road", "car", "road "])
    # more than 255 classes: the default ignore label 255 is a class index; 16-bit labels need e.g. 65535
    with pytest.raises(ValueError, match=r"ignore_label 255 must be in 300..65535.*16-bit labels, e.g. ignore_label 65535"):
        register_zero_shot_folder("bad_reg", "i", "l", [f"class {i}" for i in range(300)])
    assert "bad_reg" not in DatasetCatalog.list()


def test_all_unseen_training_set_is_refused_at_start(tmp_path):
    register_zero_shot_folder("bad_all_unseen", str(tmp_path), str(tmp_path), NAMES, NAMES)
    try:
        cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", "('bad_all_unseen',)")
        with pytest.raises(ValueError, match="'bad_all_unseen' has no seen classes \\(all 3 are unseen\\)"):
            validate_config(cfg, training=True)
        validate_config(cfg, training=False)  # evaluating such a set is fine
    finally:
        DatasetCatalog.remove("bad_all_unseen")
        MetadataCatalog.remove("bad_all_unseen")


@pytest.mark.parametrize("key,value,message", [
    ("MODEL.SEGMENTOR.INFERENCE.STRIDE", "0", "INFERENCE.STRIDE is 0; it must be in 1..CROP_SIZE"),
    ("MODEL.SEGMENTOR.INFERENCE.CROP_SIZE", "0", "INFERENCE.CROP_SIZE is 0; it must be > 0"),
    ("SOLVER.MAX_ITER", "0", "SOLVER.MAX_ITER is 0; training needs at least 1 iteration"),
])
def test_sizes_are_validated_at_start(tmp_path, key, value, message):
    train_net = load_script("train_net.py")
    args = argparse.Namespace(config_file=os.path.join(REPO, "configs/demo.yaml"), eval_only=False, resume=False,
                              opts=[key, value, "OUTPUT_DIR", str(tmp_path / "out")], num_gpus=1, num_machines=1,
                              machine_rank=0, dist_url="auto", register=[])
    with pytest.raises(ValueError, match=message):
        train_net.setup(args)
    assert not os.path.exists(tmp_path / "out")  # stopped before anything was written
    if key != "SOLVER.MAX_ITER":
        with pytest.raises(ValueError, match=message):
            load_config(os.path.join(REPO, "configs/demo.yaml"), [key, value])


def test_non_utf8_vocabulary_file_is_named(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("café\nthé\n".encode("latin-1"))
    with pytest.raises(ValueError, match="Vocabulary file '.*vocab.txt' is not UTF-8 text"):
        read_vocabulary_file(str(path))


def test_bad_clip_files_are_named(tmp_path, tiny_clip):
    good = tmp_path / "tiny.pt"
    torch.save(tiny_clip[0].state_dict(), good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:5000])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    for name in ("truncated.pt", "garbage.pt"):
        with pytest.raises(RuntimeError, match=f"cannot load CLIP checkpoint '.*{name}': it is corrupt, truncated"):
            build_clip_model("LDVC-Tiny", str(tmp_path / name))
    torch.manual_seed(0)
    torch.save(build_clip_model("ViT-B-16", "")[0].state_dict(), tmp_path / "vitb16.pt")
    with pytest.raises(RuntimeError, match="'.*vitb16.pt': it holds the weights of another architecture than 'LDVC-Tiny'"):
        build_clip_model("LDVC-Tiny", str(tmp_path / "vitb16.pt"))


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def test_torchscript_clip_file_is_named_as_such(tmp_path):
    """OpenAI's original CLIP files are TorchScript archives, not weights of another architecture."""
    path = str(tmp_path / "jit_clip.pt")
    torch.jit.script(_Linear()).save(path)
    with pytest.raises(RuntimeError, match=r"'.*jit_clip.pt': it is a TorchScript archive .*cannot be loaded safely"
                                           r".*open_clip tag.*CLIP weights and offline use"):
        build_clip_model("LDVC-Tiny", path)


def test_unreachable_hub_fails_fast_and_says_how_to_skip(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(loading, "_hub_reachable", lambda *a, **k: False)
    before = constants.HF_HUB_OFFLINE
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"'ViT-B-16' with pretrained tag 'openai'.*offline: no connection.*"
                                           r"MODEL.CLIP.CACHE_DIR.*HF_HUB_OFFLINE=1 skips"):
        build_clip_model("ViT-B-16", "openai", cache_dir=str(tmp_path / "empty_cache"))
    assert time.perf_counter() - start < 10  # the hub client's retries take ~50 s
    assert constants.HF_HUB_OFFLINE == before


def test_no_reachability_probe_behind_a_proxy(monkeypatch):
    """Behind a proxy the direct connection fails although the hub is reachable: no probe, no offline mode."""
    probes = []

    def refuse(address, *args, **kwargs):
        probes.append(address)
        raise OSError("direct connections are blocked")

    monkeypatch.setattr(loading.socket, "create_connection", refuse)
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        for variable in (name, name.lower()):
            monkeypatch.delenv(variable, raising=False)
    assert not loading._hub_reachable("ViT-B-16", "openai") and len(probes) == 1
    for variable in ("https_proxy", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(variable, "http://proxy.example:3128")
        assert loading._hub_reachable("ViT-B-16", "openai")
        monkeypatch.delenv(variable)
    assert len(probes) == 1


def test_demo_caps_thin_overlays_and_skips_images_the_resize_cannot_handle(tmp_path):
    demo = load_script("demo/demo.py")
    assert demo.overlay_min_side(1, 1000) * 1000 <= demo.OVERLAY_MAX_SIDE  # 1x1000 drawn at most 4096 long
    assert demo.overlay_min_side(80, 100) == demo.OVERLAY_MIN_SIDE  # small ordinary images still enlarged
    torch.manual_seed(1)
    weights = str(tmp_path / "model_final.pth")
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, weights)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1, 1000, 3), dtype=np.uint8)).save(inputs / "thin.png")
    Image.fromarray(rng.integers(0, 256, (1, 10000, 3), dtype=np.uint8)).save(inputs / "thinner.png")
    rc = demo.main(["--config-file", os.path.join(REPO, "configs/demo.yaml"), "--input", str(inputs), "--output",
                    str(tmp_path / "out"), "--classes", "sky,road", "--opts", "MODEL.CLIP.PRETRAINED", "",
                    "MODEL.CLIP.MODEL", "LDVC-Tiny", "MODEL.WEIGHTS", weights])
    assert rc == 1  # thinner.png skipped, by name (logged), thin.png done
    assert sorted(os.listdir(tmp_path / "out")) == ["thin_labels.png", "thin_overlay.png", "vocabulary.json"]
    with Image.open(tmp_path / "out" / "thin_overlay.png") as im:
        assert im.width <= demo.OVERLAY_MAX_SIDE + 1000  # drawing + legend panel


def test_check_dataset_reports_a_truncated_jpeg(folder, capsys):
    root, dicts = folder
    rng = np.random.default_rng(2)
    path = root / "images" / "1.jpg"  # a JPEG passes PIL's verify() even when truncated
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path, quality=95)
    _truncate(path)
    rc = load_script("tools/check_dataset.py").main(["--image-root", str(root / "images"), "--label-root",
                                                     str(root / "labels"), "--classes", ",".join(NAMES),
                                                     "--image-ext", ".jpg"])
    printed = capsys.readouterr().out
    assert rc == 1 and any("1.jpg': unreadable" in line and "truncated" in line
                           for line in printed.splitlines() if line.startswith("PROBLEM:"))
