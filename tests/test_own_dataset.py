"""Your own dataset: register_zero_shot_folder, LDVC_DATASETS / --register files, tools/check_dataset.py."""
import json
import os
import shutil

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ldvc_d2.data import LDVCTrainMapper, load_user_modules, register_zero_shot_folder
from tests.conftest import tiny_cfg
from tests.scripts import load_script

CLASSES = ["road", "car", "tree", "sky"]
SIZES = [(40, 60), (32, 32), (50, 30)]


@pytest.fixture(scope="module")
def check():
    return load_script("tools/check_dataset.py")


def _make_folder(root, sizes=SIZES, seed=0):
    """images/*.jpg + labels/*.png (values 0..3 and 255); returns the label arrays by stem."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    labels = {}
    for i, (h, w) in enumerate(sizes):
        stem = f"img{i:02d}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(os.path.join(root, "images", stem + ".jpg"))
        label = rng.choice(np.array([0, 1, 3, 255], np.uint8), size=(h, w))  # "tree" (2) never occurs
        Image.fromarray(label).save(os.path.join(root, "labels", stem + ".png"))
        labels[stem] = label
    return labels


def _register(tmp_path, name):
    root = str(tmp_path / name)
    labels = _make_folder(root)
    register_zero_shot_folder(name, os.path.join(root, "images"), os.path.join(root, "labels"), CLASSES,
                              unseen_classes=["car", 2])
    return root, labels


def _cleanup(name):
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_register_a_folder_with_a_split(tmp_path):
    name = "own_test_register"
    root, labels = _register(tmp_path, name)
    try:
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == CLASSES and meta.seen_classes == [0, 3] and meta.unseen_classes == [1, 2]
        assert meta.evaluator_type == "zero_shot_sem_seg" and meta.ignore_label == 255
        dicts = DatasetCatalog.get(name)
        assert [os.path.basename(d["sem_seg_file_name"]) for d in dicts] == [s + ".png" for s in sorted(labels)]
        assert all(d["file_name"].endswith(d["image_id"] + ".jpg") for d in dicts)
        # the training mapper reads a pair as training does
        out = LDVCTrainMapper(tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", f"('{name}',)"), True)(dicts[0])
        assert out["image"].shape[0] == 3 and out["sem_seg"].shape == out["image"].shape[1:]
        # identical re-registration is a no-op; a different one is an error
        register_zero_shot_folder(name, os.path.join(root, "images"), os.path.join(root, "labels"), CLASSES,
                                  unseen_classes=[1, 2])
        with pytest.raises(ValueError, match="already registered"):
            register_zero_shot_folder(name, os.path.join(root, "images"), os.path.join(root, "labels"), CLASSES)
    finally:
        _cleanup(name)
    with pytest.raises(ValueError, match="unseen class 'bus' is not in class_names"):
        register_zero_shot_folder("own_bad", "i", "l", CLASSES, unseen_classes=["bus"])
    with pytest.raises(ValueError, match=r"class names 1 \('car'\) and 4 \('car'\) appear more than once"):
        register_zero_shot_folder("own_bad", "i", "l", CLASSES + ["car"])
    with pytest.raises(ValueError, match="ignore_label 2 must be in 4..65535"):
        register_zero_shot_folder("own_bad", "i", "l", CLASSES, ignore_label=2)
    assert "own_bad" not in DatasetCatalog.list()


def test_registration_file_is_loaded_once(tmp_path, monkeypatch):
    root = str(tmp_path / "data")
    _make_folder(root)
    script = tmp_path / "my_datasets.py"
    script.write_text(
        "from ldvc_d2.data import register_zero_shot_folder\n"
        f"register_zero_shot_folder('own_test_file', {root + '/images'!r}, {root + '/labels'!r}, {CLASSES!r},\n"
        "                          unseen_classes=['car'])\n")
    try:
        monkeypatch.setenv("LDVC_DATASETS", str(script))  # what `import ldvc_d2` reads
        first = load_user_modules()
        assert load_user_modules([str(script)]) == first  # imported once per process
        assert MetadataCatalog.get("own_test_file").unseen_classes == [1]
        assert len(DatasetCatalog.get("own_test_file")) == len(SIZES)
    finally:
        _cleanup("own_test_file")
    with pytest.raises(FileNotFoundError, match="missing.py' does not exist"):
        load_user_modules(str(tmp_path / "missing.py"))


def test_checker_counts_match_numpy_on_good_data(tmp_path, check, capsys):
    name = "own_test_check_good"
    _, labels = _register(tmp_path, name)
    try:
        out = str(tmp_path / "counts.json")
        assert check.main(["--dataset", name, "--output", out]) == 0
        printed = capsys.readouterr().out
        with open(out) as f:
            report = json.load(f)
    finally:
        _cleanup(name)
    values = np.concatenate([label.ravel() for label in labels.values()])
    assert report["pixels"] == [int((values == k).sum()) for k in range(4)]
    assert report["pixels"][2] == 0 and report["ignore_pixels"] == int((values == 255).sum())
    assert report["images"] == [sum(int((label == k).any()) for label in labels.values()) for k in range(4)]
    assert report["problems"] == [] and report["num_images"] == 3
    assert "OK:" in printed and "| road" in printed and "no pixel here: tree" in printed


def test_checker_names_every_bad_file_and_fails(tmp_path, check, capsys):
    root = str(tmp_path / "bad")
    _make_folder(root, sizes=SIZES + [(20, 20), (20, 20)])
    labels_dir, images_dir = os.path.join(root, "labels"), os.path.join(root, "images")
    bad_value = np.zeros((40, 60), np.uint8)
    bad_value[0, :3] = 7
    Image.fromarray(bad_value).save(os.path.join(labels_dir, "img00.png"))  # value 7 with 4 classes
    Image.fromarray(np.zeros((33, 32), np.uint8)).save(os.path.join(labels_dir, "img01.png"))  # wrong size
    Image.fromarray(np.zeros((50, 30, 3), np.uint8)).save(os.path.join(labels_dir, "img02.png"))  # RGB label
    os.remove(os.path.join(labels_dir, "img03.png"))  # image without label
    shutil.copy(os.path.join(labels_dir, "img04.png"), os.path.join(labels_dir, "orphan.png"))  # label without image
    rc = check.main(["--image-root", images_dir, "--label-root", labels_dir, "--classes", ",".join(CLASSES),
                     "--unseen", "car"])
    printed = capsys.readouterr().out
    assert rc == 1
    problems = [line for line in printed.splitlines() if line.startswith("PROBLEM:")]
    assert any("img00.png" in p and "values 7 (3 px)" in p for p in problems)
    assert any("img01.png" in p and "size 32x33 differs" in p and "32x32" in p for p in problems)
    assert any("img02.png" in p and "mode RGB" in p for p in problems)
    assert any("img03.png" in p and "labels (images present)" in p for p in problems)
    assert any("orphan.jpg" in p and "images (labels present)" in p for p in problems)
    assert "4 problem(s) found" in printed  # the two unmatched files are one pairing problem
    assert "4 image/label pairs" in printed  # the matched pairs are still checked and counted
