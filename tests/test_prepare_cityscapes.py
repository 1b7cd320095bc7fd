"""``datasets/prepare_cityscapes.py`` on a small fake tree, checked pixel by pixel against the
cityscapesScripts id table written out here, and the ``cityscapes_*`` registrations reading the
nested image folders."""
import importlib
import os
import sys
import uuid

import numpy as np
import pytest
from PIL import Image

from ldvc_d2.data.datasets import register_cityscapes
from detectron2.data import DatasetCatalog, MetadataCatalog  # after ldvc_d2: its compat shims
from tests.fake_datasets import make_cityscapes_tree, write_png

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets"))
prepare_cityscapes = importlib.import_module("prepare_cityscapes")
CountWarning = importlib.import_module("_prep_utils").CountWarning

# cityscapesScripts helpers/labels.py: (name, labelId, trainId) of every label with trainId != 255.
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
             26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
         "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
         "bicycle"]
SPLITS = {"val": {"frankfurt": ["frankfurt_000000_000294", "frankfurt_000001_000538"],
                  "lindau": ["lindau_000000_000019"]},
          "train": {"aachen": ["aachen_000000_000019"]}}


def _expected(label_ids: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: TRAIN_IDS.get(int(v), 255))(label_ids)


def test_label_ids_become_train_ids(tmp_path, capsys):
    raw = make_cityscapes_tree(str(tmp_path), SPLITS)
    with pytest.warns(CountWarning) as record:
        assert prepare_cityscapes.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    messages = [str(w.message) for w in record]
    assert any("3 images, the official dataset has 500" in m for m in messages)
    assert any("1 images, the official dataset has 2975" in m for m in messages)
    out = tmp_path / "cityscapes" / "gtFine_ldvc"
    for split, cities in SPLITS.items():
        stems = [s for ss in cities.values() for s in ss]
        assert sorted(os.listdir(out / split)) == sorted(s + ".png" for s in stems)
        for stem in stems:
            got = np.array(Image.open(out / split / f"{stem}.png"))
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, _expected(raw[stem]), err_msg=stem)
    first = np.array(Image.open(out / "val" / "frankfurt_000000_000294.png"))
    assert set(np.unique(first)) == set(range(19)) | {255}  # all 34 labelIds were stamped in
    assert "val: 3 written, 0 already done" in capsys.readouterr().out


def test_bad_label_id_and_missing_image_name_the_file(tmp_path, capsys):
    make_cityscapes_tree(str(tmp_path), {"val": SPLITS["val"]})
    bad = tmp_path / "cityscapes" / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    write_png(str(bad), np.full((6, 8), 34))
    with pytest.warns(CountWarning):
        assert prepare_cityscapes.main(["--root", str(tmp_path), "--workers", "1", "--splits", "val"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "[34]" in err and "labelIds 0..33" in err
    os.remove(tmp_path / "cityscapes" / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png")
    assert prepare_cityscapes.main(["--root", str(tmp_path), "--workers", "1", "--splits", "val"]) == 1
    assert "lindau_000000_000019_gtFine_labelIds.png" in capsys.readouterr().err
    assert prepare_cityscapes.main(["--root", str(tmp_path / "none"), "--splits", "val"]) == 1
    assert "gtFine_trainvaltest.zip" in capsys.readouterr().err


def test_registered_sets_pair_the_city_folders(tmp_path):
    raw = make_cityscapes_tree(str(tmp_path), SPLITS)
    with pytest.warns(CountWarning):
        prepare_cityscapes.main(["--root", str(tmp_path), "--workers", "1"])
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    register_cityscapes.register_all_cityscapes(str(tmp_path), prefix)
    meta = MetadataCatalog.get(prefix + "cityscapes_val")
    assert meta.stuff_classes == NAMES and meta.ignore_label == 255
    assert meta.seen_classes == [] and meta.unseen_classes == list(range(19))
    records = DatasetCatalog.get(prefix + "cityscapes_val")
    assert [r["image_id"] for r in records] == sorted(s for ss in SPLITS["val"].values() for s in ss)
    for r in records:
        city = r["image_id"].split("_")[0]
        assert r["file_name"] == str(tmp_path / "cityscapes" / "leftImg8bit" / "val" / city
                                     / f"{r['image_id']}_leftImg8bit.png")
        np.testing.assert_array_equal(np.array(Image.open(r["sem_seg_file_name"])), _expected(raw[r["image_id"]]))
    assert len(DatasetCatalog.get(prefix + "cityscapes_train")) == 1
    # the same stem in two city folders is an error naming both
    dup = tmp_path / "cityscapes" / "leftImg8bit" / "val" / "munster" / "lindau_000000_000019_leftImg8bit.png"
    os.makedirs(dup.parent)
    Image.new("RGB", (8, 6)).save(dup)
    with pytest.raises(FileNotFoundError, match="two images with the stem 'lindau_000000_000019'"):
        DatasetCatalog.get(prefix + "cityscapes_val")
