"""The ``datasets/prepare_*.py`` scripts on small fake trees, checked against expectations computed
here, pixel by pixel, from the dataset specifications (not from the scripts' tables)."""
import importlib
import os
import sys

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tests.fake_datasets import (SBD_TRAIN, SBD_VAL, VOC_VAL, coco_contiguous, make_coco_stuff_tree,
                                 make_voc_tree, voc_expected, write_image, write_lines, write_png)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "datasets"))
prep_utils = importlib.import_module("_prep_utils")
prepare_voc = importlib.import_module("prepare_voc")
prepare_coco_stuff = importlib.import_module("prepare_coco_stuff")
prepare_context = importlib.import_module("prepare_context")
prepare_ade20k = importlib.import_module("prepare_ade20k")
CountWarning = prep_utils.CountWarning
CONTEXT59_CLASSES = prep_utils.CLASSES.CONTEXT59_CLASSES


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _read(path: str) -> np.ndarray:
    return np.array(Image.open(path))


def _labels_in(folder: str) -> set:
    return {n for n in os.listdir(folder) if n.endswith(".png")}


# ---------------------------------------------------------------------------------------------- VOC
@pytest.mark.parametrize("workers", [1, 2])
def test_voc_outputs_match_spec(tmp_path, workers):
    raw = make_voc_tree(str(tmp_path))
    with pytest.warns(CountWarning) as record:
        assert prepare_voc.main(["--root", str(tmp_path), "--workers", str(workers)]) == 0
    messages = [str(w.message) for w in record]
    assert any("4 images, the official dataset has 10582" in m for m in messages)
    assert any("2 images, the official dataset has 1449" in m for m in messages)
    out = tmp_path / "VOCdevkit" / "VOC2012" / "annotations_ldvc"
    train_aug = {"2007_000001", "2007_000002", "2008_000010", "2008_000011"}  # minus VOC val
    assert _labels_in(out / "train_aug") == {i + ".png" for i in train_aug}
    assert _labels_in(out / "val") == {i + ".png" for i in VOC_VAL}
    for split, ids in (("train_aug", train_aug), ("val", VOC_VAL)):
        for i in ids:
            got = _read(out / split / f"{i}.png")
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, voc_expected(raw[i]), err_msg=i)


def test_voc_rerun_skips_finished_files(tmp_path, capsys):
    make_voc_tree(str(tmp_path))
    args = ["--root", str(tmp_path), "--workers", "1"]
    with pytest.warns(CountWarning):
        prepare_voc.main(args)
    out = tmp_path / "VOCdevkit" / "VOC2012" / "annotations_ldvc" / "val"
    sentinel = np.full((2, 2), 7, np.uint8)
    write_png(str(out / "2007_000003.png"), sentinel)  # a finished file must not be rewritten
    os.remove(out / "2007_000004.png")  # as if the run had been interrupted before this one
    (out / ".2007_000004.png.123.tmp").write_bytes(b"half-written")
    capsys.readouterr()
    with pytest.warns(CountWarning):
        assert prepare_voc.main(args) == 0
    stdout = capsys.readouterr().out
    assert "train_aug: 0 written, 4 already done" in stdout
    assert "val: 1 written, 1 already done" in stdout
    np.testing.assert_array_equal(_read(out / "2007_000003.png"), sentinel)
    assert os.listdir(out) and not [n for n in os.listdir(out) if n.startswith(".")]


def test_voc_reuses_segmentation_class_aug(tmp_path):
    raw = make_voc_tree(str(tmp_path))
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    os.rename(tmp_path / "VOCdevkit" / "VOCaug", tmp_path / "VOCaug_moved")  # SBD absent
    for i in SBD_TRAIN + SBD_VAL:  # index ("L") PNGs as in the common SegmentationClassAug
        write_png(str(voc / "SegmentationClassAug" / f"{i}.png"), raw[i])
    with pytest.warns(CountWarning):
        assert prepare_voc.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    got = _read(voc / "annotations_ldvc" / "train_aug" / "2008_000011.png")
    np.testing.assert_array_equal(got, voc_expected(raw["2008_000011"]))
    assert len(_labels_in(voc / "annotations_ldvc" / "train_aug")) == 4


@pytest.mark.parametrize("problem, message", [
    ("rgb", "colour"), ("value", "[21]"), ("size", "differs from image"),
    ("garbage", "cannot read"),
])
def test_voc_bad_labels_name_the_file(tmp_path, capsys, problem, message):
    make_voc_tree(str(tmp_path))
    bad = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000004.png"
    shape = np.array(Image.open(bad)).shape
    if problem == "rgb":
        Image.new("RGB", shape[::-1], (128, 0, 0)).save(bad)
    elif problem == "value":
        write_png(str(bad), np.full(shape, 21), palette=True)
    elif problem == "size":
        write_png(str(bad), np.zeros((shape[0] + 1, shape[1])), palette=True)
    else:
        bad.write_bytes(b"not a png")
    with pytest.warns(CountWarning):
        assert prepare_voc.main(["--root", str(tmp_path), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and message in err


# --------------------------------------------------------------------------------------- COCO-Stuff
def test_coco_stuff_maps_ids_across_the_gaps(tmp_path):
    coco = tmp_path / "coco"
    splits = {"train2017": ["000000000009", "000000000025"], "val2017": ["000000000139"]}
    # every label starts with cow, banner, wood; an image without a label must be warned about
    raw = make_coco_stuff_tree(str(tmp_path), splits, seed=1, stamp=(20, 91, 181),
                               unlabeled_images={"val2017": ["000000000285"]})
    with pytest.warns(CountWarning) as record:
        assert prepare_coco_stuff.main(["--root", str(tmp_path), "--workers", "2"]) == 0
    assert any("1 COCO-Stuff val2017 images without a label" in str(w.message) for w in record)
    for name, values in raw.items():
        split = "val2017" if name == "000000000139" else "train2017"
        got = _read(coco / "stuffthingmaps_ldvc" / split / f"{name}.png")
        np.testing.assert_array_equal(got, coco_contiguous(values))
        assert got[0, :3].tolist() == [19, 80, 170]  # DESIGN: cow is 19; 171 classes end at 170


def test_coco_stuff_unused_id_is_an_error(tmp_path, capsys):
    coco = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        write_png(str(coco / "stuffthingmaps_trainval2017" / split / "1.png"), np.full((3, 3), 11))
        write_image(str(coco / split / "1.jpg"), 3, 3)
    with pytest.warns(CountWarning):
        assert prepare_coco_stuff.main(["--root", str(tmp_path), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "train2017/1.png" in err and "[11]" in err and "1-based" in err


# --------------------------------------------------------------------------------- PASCAL Context
def _make_context(root: str, main_lists: bool = False):
    """labels.txt with the 59 names at ids chosen here, LabelMap .mats; returns (raw, id->k)."""
    rng, ctx = _rng(2), os.path.join(root, "VOCdevkit", "VOC2010")
    full_ids = rng.permutation(np.arange(1, 460))
    names = {int(full_ids[k]): n for k, n in enumerate(CONTEXT59_CLASSES)}
    with open(os.path.join(_mkdir(ctx), "labels.txt"), "w") as f:
        f.write("".join(f"{i}: {names.get(i, f'rare{i}')}\n" for i in range(1, 460)))
    raw, splits = {}, {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    for k, i in enumerate(splits["train"] + splits["val"]):
        raw[i] = rng.integers(0, 460, size=(5 + k, 8)).astype(np.uint16)
        raw[i][0, 0] = full_ids[0]  # aeroplane somewhere
        scipy.io.savemat(os.path.join(_mkdir(os.path.join(ctx, "trainval")), i + ".mat"),
                         {"LabelMap": raw[i]})
        write_image(os.path.join(ctx, "JPEGImages", i + ".jpg"), 5 + k, 8)
    lists = "Main" if main_lists else "SegmentationContext"
    write_lines(os.path.join(ctx, "ImageSets", lists, "train.txt"),
                splits["train"] + ["2008_000004"])
    write_lines(os.path.join(ctx, "ImageSets", lists, "val.txt"), splits["val"])
    return raw, {i: CONTEXT59_CLASSES.index(n) for i, n in names.items()}


def _mkdir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def test_context_maps_by_name_and_ignores_the_rest(tmp_path):
    raw, index = _make_context(str(tmp_path), main_lists=True)
    with pytest.warns(CountWarning) as record:  # Main lists: ids without a .mat are skipped, named
        assert prepare_context.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    assert any("2008_000004" in str(w.message) and "(skipped)" in str(w.message) for w in record)
    out = tmp_path / "VOCdevkit" / "VOC2010" / "annotations_ctx59"
    assert _labels_in(out / "train") == {"2008_000002.png", "2008_000003.png"}
    for i, values in raw.items():
        split = "val" if i == "2008_000007" else "train"
        expected = np.vectorize(lambda v: index.get(int(v), 255))(values)
        got = _read(out / split / f"{i}.png")
        np.testing.assert_array_equal(got, expected)
        assert got[0, 0] == 0 and set(np.unique(got)) <= set(range(59)) | {255}


def test_context_list_without_label_is_an_error(tmp_path, capsys):
    _make_context(str(tmp_path), main_lists=False)
    assert prepare_context.main(["--root", str(tmp_path), "--workers", "1"]) == 1
    assert "2008_000004" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- ADE20K
def test_ade20k_shifts_ids_and_ignores_zero(tmp_path, capsys):
    ade, rng = tmp_path / "ADEChallengeData2016", _rng(3)
    raw = {f"ADE_val_0000000{k}": rng.integers(0, 151, size=(4, 6 + k)) for k in (1, 2)}
    for name, values in raw.items():
        write_png(str(ade / "annotations" / "validation" / f"{name}.png"), values)
        write_image(str(ade / "images" / "validation" / f"{name}.jpg"), 4, 6 + int(name[-1]))
    with pytest.warns(CountWarning, match="2 images, the official dataset has 2000"):
        assert prepare_ade20k.main(["--root", str(tmp_path)]) == 0
    for name, values in raw.items():
        got = _read(ade / "annotations_ldvc" / "validation" / f"{name}.png")
        np.testing.assert_array_equal(got, np.where(values == 0, 255, values - 1))
    os.remove(ade / "images" / "validation" / "ADE_val_00000002.jpg")  # label without image: error
    assert prepare_ade20k.main(["--root", str(tmp_path)]) == 1
    assert "ADE_val_00000002.png" in capsys.readouterr().err
