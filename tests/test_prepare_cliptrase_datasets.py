"""The preparation scripts of CLIPtrase's benchmarks (VOC-21, Context-60/459, COCO-Object, ADE-full)
and the ``--center-crop`` protocol, on small fake trees, against expectations computed here from
the dataset specifications (and, for the crop, by hand and with torchvision, which the official
script uses)."""
import importlib
import os
import sys

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from ldvc_d2.data.datasets.ade_full_classes import ADE_FULL_IDS
from ldvc_d2.data.datasets.builtin_classes import CONTEXT59_CLASSES
from ldvc_d2.data.datasets.context459_classes import CONTEXT459_CLASSES
from tests.fake_datasets import (VOC_VAL, make_ade_full_tree, make_coco_stuff_tree,
                                 make_context_full_tree, make_voc_tree, write_image, write_png)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "datasets"))
CountWarning = importlib.import_module("_prep_utils").CountWarning
center_crop = importlib.import_module("_center_crop")
prepare_voc21 = importlib.import_module("prepare_voc21")
prepare_context60 = importlib.import_module("prepare_context60")
prepare_context459 = importlib.import_module("prepare_context459")
prepare_coco_stuff = importlib.import_module("prepare_coco_stuff")
prepare_coco_object = importlib.import_module("prepare_coco_object")
prepare_ade_full = importlib.import_module("prepare_ade_full")

CTX_VAL = ["2008_000002", "2008_000007"]


def _read(path) -> np.ndarray:
    return np.array(Image.open(path))


def _run(module, root, *extra):
    with pytest.warns(CountWarning):  # fake trees never have the official image counts
        assert module.main(["--root", str(root), "--workers", "1", *extra]) == 0


# ------------------------------------------------------------------------------------ VOC-21
def test_voc21_keeps_background_and_boundary(tmp_path):
    raw = make_voc_tree(str(tmp_path), all_ids=True)
    _run(prepare_voc21, tmp_path)
    out = tmp_path / "VOCdevkit" / "VOC2012" / "annotations_voc21" / "val"
    assert sorted(os.listdir(out)) == [i + ".png" for i in VOC_VAL]
    for i in VOC_VAL:  # VOC ids unchanged: 0 background, 1..20, 255 boundary
        np.testing.assert_array_equal(_read(out / f"{i}.png"), raw[i])
        assert {0, 20, 255} <= set(np.unique(raw[i]).tolist())


# ------------------------------------------------------------------------------ Context-60/459
def test_context60_background_is_everything_outside_the_59(tmp_path):
    raw = make_context_full_tree(str(tmp_path), CTX_VAL, CONTEXT459_CLASSES)
    _run(prepare_context60, tmp_path)
    name_of = dict(enumerate(CONTEXT459_CLASSES, 1))
    for i, values in raw.items():
        expected = np.vectorize(lambda v: CONTEXT59_CLASSES.index(name_of[v]) + 1
                                if name_of.get(v) in CONTEXT59_CLASSES else 0)(values)
        got = _read(tmp_path / "VOCdevkit" / "VOC2010" / "annotations_ctx60" / "val" / f"{i}.png")
        np.testing.assert_array_equal(got, expected)
        assert got.max() <= 59 and 0 in got


def test_context459_writes_16bit_labels_id_minus_one(tmp_path):
    raw = make_context_full_tree(str(tmp_path), CTX_VAL, CONTEXT459_CLASSES)
    _run(prepare_context459, tmp_path)
    for i, values in raw.items():
        got = _read(tmp_path / "VOCdevkit" / "VOC2010" / "annotations_ctx459" / "val" / f"{i}.png")
        assert got.dtype == np.uint16 and got.shape == values.shape
        np.testing.assert_array_equal(got, np.where(values == 0, 65535, values.astype(int) - 1))
        assert got.reshape(-1)[:4].tolist() == [65535, 0, 255, 458]  # stamped ids 0, 1, 256, 459


def test_context459_warns_about_renamed_ids(tmp_path):
    names = list(CONTEXT459_CLASSES)
    names[0], names[1] = names[1], names[0]
    make_context_full_tree(str(tmp_path), CTX_VAL[:1], names)
    with pytest.warns(prepare_context459.NameWarning, match="2 ids are named differently.*1: 'aeroplane'"):
        _run(prepare_context459, tmp_path)


# ------------------------------------------------------------------------------- COCO-Object
def test_coco_object_things_kept_stuff_is_background(tmp_path):
    names = ["000000000139", "000000000285"]
    raw = make_coco_stuff_tree(str(tmp_path), {"train2017": ["000000000009"], "val2017": names},
                               stamp=(0, 89, 91, 181, 255))  # person, toothbrush, banner, wood
    _run(prepare_coco_stuff, tmp_path)
    _run(prepare_coco_object, tmp_path, "--center-crop", "4")
    unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}  # 0-based thing ids naming no class
    for name in names:
        ids = raw[name]
        thing_index = np.vectorize(lambda v: v - sum(u < v for u in unused))(ids)
        expected = np.where(ids == 255, 255, np.where(ids <= 90, thing_index, 80))
        got = _read(tmp_path / "coco" / "coco_object_ldvc" / "val2017" / f"{name}.png")
        np.testing.assert_array_equal(got, expected)
        assert got.reshape(-1)[:5].tolist() == [0, 79, 80, 80, 255]
        crop = tmp_path / "crop4" / "coco"
        assert _read(crop / "coco_object_ldvc" / "val2017" / f"{name}.png").shape == (4, 4)
        assert os.path.isfile(crop / "val2017" / f"{name}.png")


def test_coco_object_needs_prepared_coco_stuff(tmp_path, capsys):
    make_coco_stuff_tree(str(tmp_path), {"val2017": ["000000000139"]})
    assert prepare_coco_object.main(["--root", str(tmp_path)]) == 1
    assert "prepare_coco_stuff.py" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- ADE-full
def test_ade_full_maps_object_ids_and_resizes_like_the_literature(tmp_path):
    listed = [2978, 312, 3148, 1831]  # wall, building, adding machine (the last), person
    unlisted = [0, 1, 2, 3157]  # unlabelled and object ids outside the 847
    sizes = {"ADE_val_00000001": (6, 9), "ADE_val_00000002": (700, 530)}  # the second: short 530
    raw = make_ade_full_tree(str(tmp_path), sizes, listed + unlisted)
    _run(prepare_ade_full, tmp_path)
    ade = tmp_path / "ADE20K_2021_17_01"
    label_of = {2978: 0, 312: 1, 3148: 846, 1831: 11}  # MaskFormer's trainIds
    for name, classes in raw.items():
        h, w = classes.shape
        if min(h, w) > 512:  # short side -> 512, long side rounded; OpenCV nearest: floor(i * in/out)
            nh, nw = round(h / w * 512), 512
            classes = classes[np.floor(np.arange(nh) * h / nh).astype(int)][
                :, np.floor(np.arange(nw) * w / nw).astype(int)]
        expected = np.vectorize(lambda v: label_of.get(v, 65535))(classes)
        got = _read(ade / "annotations_ldvc" / "validation" / f"{name}.png")
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, expected)
        assert Image.open(ade / "images_ldvc" / "validation" / f"{name}.jpg").size == got.shape[::-1]
    assert _read(ade / "annotations_ldvc" / "validation" / "ADE_val_00000002.png").shape == (676, 512)
    assert ADE_FULL_IDS[11] == 1831


def test_ade_full_missing_seg_is_an_error(tmp_path, capsys):
    make_ade_full_tree(str(tmp_path), {"ADE_val_00000001": (4, 5)}, [2978])
    seg = next(p for p, _, f in os.walk(tmp_path) if "ADE_val_00000001_seg.png" in f)
    os.remove(os.path.join(seg, "ADE_val_00000001_seg.png"))
    assert prepare_ade_full.main(["--root", str(tmp_path)]) == 1
    assert "ADE_val_00000001_seg.png" in capsys.readouterr().err


# ------------------------------------------------------------------------------- centre crop
@pytest.mark.parametrize("h, w, n, rows, cols", [
    (8, 12, 4, slice(1, 8, 2), slice(3, 10, 2)),  # halved: 4x6, nearest takes odd pixels; left 1
    (4, 7, 4, slice(0, 4), slice(2, 6)),  # no resize; left = round(1.5) = 2
    (4, 9, 4, slice(0, 4), slice(2, 6)),  # no resize; left = round(2.5) = 2 (half to even)
    (9, 4, 4, slice(2, 6), slice(0, 4)),  # portrait: top = round(2.5) = 2
    (7, 4, 4, slice(2, 6), slice(0, 4)),  # portrait: top = round(1.5) = 2
])
def test_center_crop_label_by_hand(h, w, n, rows, cols):
    label = (np.arange(h)[:, None] * 20 + np.arange(w)[None, :]).astype(np.uint8)
    np.testing.assert_array_equal(center_crop.center_crop_label(label, n), label[rows, cols])
    np.testing.assert_array_equal(center_crop.center_crop_label(label.astype(np.uint16) * 300, n),
                                  label[rows, cols].astype(np.uint16) * 300)


@pytest.mark.parametrize("h, w, n", [(375, 500, 224), (500, 333, 336), (13, 30, 5)])
def test_center_crop_equals_torchvision(h, w, n):
    rng = np.random.default_rng(h)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    label = rng.integers(0, 900, (h, w)).astype(np.uint16)
    ref_image = T.CenterCrop(n)(T.Resize(n, interpolation=T.InterpolationMode.BICUBIC)(image))
    ref_label = T.CenterCrop(n)(T.Resize(n, interpolation=T.InterpolationMode.NEAREST)(
        Image.fromarray(label)))
    np.testing.assert_array_equal(np.asarray(center_crop.center_crop_image(image, n)),
                                  np.asarray(ref_image))
    np.testing.assert_array_equal(center_crop.center_crop_label(label, n), np.asarray(ref_label))


def test_center_crop_option_writes_pairs_and_resumes(tmp_path, capsys):
    make_voc_tree(str(tmp_path), size=(8, 12))
    _run(prepare_voc21, tmp_path, "--center-crop", "4", "6")
    crop = tmp_path / "crop4" / "VOCdevkit" / "VOC2012"
    prepared = tmp_path / "VOCdevkit" / "VOC2012" / "annotations_voc21" / "val"
    for i in VOC_VAL:
        label = _read(crop / "annotations_voc21" / "val" / f"{i}.png")
        np.testing.assert_array_equal(label, _read(prepared / f"{i}.png")[1::2, 3:10:2])
        assert Image.open(crop / "JPEGImages" / f"{i}.png").size == (4, 4)
        assert Image.open(tmp_path / "crop6" / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{i}.png").size == (6, 6)
    capsys.readouterr()
    _run(prepare_voc21, tmp_path, "--center-crop", "4")
    assert "crop4 VOCdevkit/VOC2012/annotations_voc21/val: 0 written, 2 already done" in capsys.readouterr().out


def test_center_crop_label_without_image_is_an_error(tmp_path, capsys):
    root = tmp_path
    write_png(str(root / "labels" / "a.png"), np.zeros((4, 4)))
    write_image(str(root / "images" / "b.jpg"), 4, 4)
    with pytest.raises(FileNotFoundError, match="a.png"):
        center_crop.crop_jobs(str(root), "images", "labels", 4)
    with pytest.raises(ValueError, match="positive"):
        center_crop.crop_jobs(str(root), "images", "labels", 0)
