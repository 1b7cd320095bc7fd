"""Registration of the zero-shot benchmarks: names, metadata, splits as DESIGN.md §3 states them,
and the dataset functions on small prepared trees (registered again under unique names per test)."""
import logging
import os
import uuid

import numpy as np
import pytest
from PIL import Image

from ldvc_d2.data.datasets import (builtin_classes, register_ade, register_cityscapes, register_coco_stuff,
                                   register_context, register_voc)
from ldvc_d2.data.datasets.zero_shot_sem_seg import datasets_root
from detectron2.data import DatasetCatalog, MetadataCatalog  # after ldvc_d2: its compat shims

ZS = ["voc_zs_train_seen", "voc_zs_val", "coco_stuff_zs_train_seen", "coco_stuff_zs_val",
      "context59_zs_train_seen", "context59_zs_val"]
FULL = ["voc_full_train", "coco_stuff_full_train"]
CROSS = ["voc20_val", "context59_val", "ade150_val"]
NUM_CLASSES = {"voc": 20, "coco_stuff": 171, "context59": 59, "ade150": 150}
# The unseen classes exactly as DESIGN.md §3 lists them.
DESIGN_UNSEEN = {
    "voc": {"pottedplant", "sheep", "sofa", "train", "tvmonitor"},
    "coco_stuff": {"cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors",
                   "cardboard", "clouds", "grass", "playingfield", "river", "road", "tree",
                   "wall-concrete"},
    "context59": {"cow", "motorbike", "sofa", "cat", "boat", "fence", "bird", "tvmonitor",
                  "aeroplane", "keyboard"},
}
REGISTER = {"voc": register_voc.register_all_voc,
            "coco_stuff": register_coco_stuff.register_all_coco_stuff,
            "context59": register_context.register_all_context,
            "ade150": register_ade.register_all_ade,
            "cityscapes": register_cityscapes.register_all_cityscapes}


def _benchmark(name: str) -> str:
    return next(b for b in NUM_CLASSES if name.startswith(b))


@pytest.mark.parametrize("name", ZS + FULL + CROSS)
def test_registered_with_full_metadata(name):
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    n = NUM_CLASSES[_benchmark(name)]
    assert len(meta.stuff_classes) == n and len(set(meta.stuff_classes)) == n
    assert len(meta.stuff_colors) == n and all(len(c) == 3 for c in meta.stuff_colors)
    assert sorted(meta.seen_classes + meta.unseen_classes) == list(range(n))
    assert meta.ignore_label == 255 and meta.evaluator_type == "zero_shot_sem_seg"
    assert meta.image_root.startswith(datasets_root()) and meta.sem_seg_root.startswith(
        datasets_root())
    if name in FULL:
        assert meta.unseen_classes == []
    if name in CROSS:  # documented choice: a model trained on COCO-Stuff has seen none of them
        assert meta.seen_classes == []


@pytest.mark.parametrize("name", ZS)
def test_unseen_indices_name_the_design_classes(name):
    meta = MetadataCatalog.get(name)
    assert {meta.stuff_classes[i] for i in meta.unseen_classes} == DESIGN_UNSEEN[_benchmark(name)]


def test_class_orders_match_design():
    assert builtin_classes.VOC_UNSEEN == (15, 16, 17, 18, 19)
    assert builtin_classes.COCO_STUFF_UNSEEN == (19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136,
                                                 137, 157, 160)
    assert builtin_classes.VOC_CLASSES[:3] == ("aeroplane", "bicycle", "bird")
    assert builtin_classes.COCO_STUFF_CLASSES[79:81] == ("toothbrush", "banner")
    assert builtin_classes.ADE150_CLASSES[-1] == "flag"
    with pytest.raises(AssertionError, match="unseen indices"):
        builtin_classes.check_split(("a", "b"), (0,), ("b",), 2)


def _write(path, image=None, label=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if image is not None:
        Image.new("RGB", image, (1, 2, 3)).save(path)
    else:
        Image.fromarray(label).save(path)


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}_"


def test_get_returns_matching_dicts_from_the_env_root(tmp_path, monkeypatch):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for stem in ("2007_000033", "2007_000042", "2007_000061"):  # 61: an image of another split
        _write(str(voc / "JPEGImages" / f"{stem}.jpg"), image=(6, 4))
    for stem in ("2007_000042", "2007_000033"):
        _write(str(voc / "annotations_ldvc" / "val" / f"{stem}.png"),
               label=np.full((4, 6), 3, np.uint8))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    prefix = _prefix()
    assert prefix + "voc_zs_val" in register_voc.register_all_voc(prefix=prefix)
    dicts = DatasetCatalog.get(prefix + "voc_zs_val")
    assert [d["image_id"] for d in dicts] == ["2007_000033", "2007_000042"]
    for d in dicts:
        assert d["file_name"] == str(voc / "JPEGImages" / f"{d['image_id']}.jpg")
        label = voc / "annotations_ldvc" / "val" / f"{d['image_id']}.png"
        assert d["sem_seg_file_name"] == str(label)
        assert os.path.isfile(d["file_name"]) and os.path.isfile(d["sem_seg_file_name"])
    assert MetadataCatalog.get(prefix + "voc_zs_val").sem_seg_root == str(
        voc / "annotations_ldvc" / "val")


@pytest.mark.parametrize("suite, name, folder, command", [
    ("voc", "voc_zs_train_seen", "annotations_ldvc/train_aug", "python datasets/prepare_voc.py"),
    ("coco_stuff", "coco_stuff_zs_val", "stuffthingmaps_ldvc/val2017",
     "python datasets/prepare_coco_stuff.py"),
    ("context59", "context59_zs_train_seen", "annotations_ctx59/train",
     "python datasets/prepare_context.py"),
    ("ade150", "ade150_val", "annotations_ldvc/validation", "python datasets/prepare_ade20k.py"),
], ids=["voc", "coco_stuff", "context59", "ade150"])
def test_missing_label_folder_names_folder_and_command(tmp_path, suite, name, folder, command):
    prefix = _prefix()
    REGISTER[suite](str(tmp_path), prefix)  # registration itself never touches the files
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get(prefix + name)
    message = str(error.value)
    assert os.path.join(str(tmp_path), "") in message and folder in message
    assert command in message


def _coco_tree(root) -> str:
    coco = root / "coco"
    for stem in ("000000000139", "000000000285", "000000000632"):
        _write(str(coco / "val2017" / f"{stem}.jpg"), image=(5, 5))
    for stem in ("000000000139", "000000000285"):
        _write(str(coco / "stuffthingmaps_ldvc" / "val2017" / f"{stem}.png"),
               label=np.zeros((5, 5), np.uint8))
    return str(coco)


def test_unmatched_files_error_by_default_and_warn_on_request(tmp_path, monkeypatch, caplog):
    _coco_tree(tmp_path)
    prefix = _prefix()
    register_coco_stuff.register_all_coco_stuff(str(tmp_path), prefix)
    monkeypatch.delenv("LDVC_UNMATCHED_FILES", raising=False)
    with pytest.raises(FileNotFoundError, match=r"1 labels \(images present\).*000000000632\.png"):
        DatasetCatalog.get(prefix + "coco_stuff_zs_val")
    monkeypatch.setenv("LDVC_UNMATCHED_FILES", "warn")
    with caplog.at_level(logging.WARNING):
        dicts = DatasetCatalog.get(prefix + "coco_stuff_zs_val")
    assert [d["image_id"] for d in dicts] == ["000000000139", "000000000285"]
    assert "000000000632.png" in caplog.text


def test_label_without_image_is_an_error(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    _write(str(voc / "JPEGImages" / "2007_000033.jpg"), image=(4, 4))
    for stem in ("2007_000033", "2007_000129"):
        _write(str(voc / "annotations_ldvc" / "val" / f"{stem}.png"),
               label=np.zeros((4, 4), np.uint8))
    prefix = _prefix()
    register_voc.register_all_voc(str(tmp_path), prefix)
    with pytest.raises(FileNotFoundError, match=r"1 images \(labels present\).*2007_000129\.jpg"):
        DatasetCatalog.get(prefix + "voc_zs_val")


# ------------------------------------------------------------------- CLIPtrase's benchmarks
# name: (classes, ignore label, background index, first / last class name)
CLIPTRASE_SETS = {
    "voc21_val": (21, 255, 0, "background", "tvmonitor"),
    "context60_val": (60, 255, 0, "background", "wood"),
    "coco_object_val": (81, 255, 80, "person", "background"),
    "context459_val": (459, 65535, None, "accordion", "wool"),
    "ade_full_val": (847, 65535, None, "wall", "adding machine, totalizer, totaliser"),
}
CROP_BASES = ["voc20_val", "voc21_val", "context59_val", "context60_val", "context459_val",
              "coco_stuff_zs_val", "coco_object_val", "ade150_val", "ade_full_val"]


@pytest.mark.parametrize("name", sorted(CLIPTRASE_SETS))
def test_cliptrase_sets_are_all_unseen_with_their_labels(name):
    n, ignore, background, first, last = CLIPTRASE_SETS[name]
    meta = MetadataCatalog.get(name)
    assert len(meta.stuff_classes) == n == len(set(meta.stuff_classes)) == len(meta.stuff_colors)
    assert len({tuple(c) for c in meta.stuff_colors}) == n  # distinct colours past 255 classes
    assert (meta.stuff_classes[0], meta.stuff_classes[-1]) == (first, last)
    assert meta.seen_classes == [] and meta.unseen_classes == list(range(n))
    assert meta.ignore_label == ignore and not 0 <= ignore < n
    assert meta.evaluator_type == "zero_shot_sem_seg" and len(meta.prompt_class_names) == n
    assert meta.get("background_class") == background
    if background is None:
        assert meta.get("background_names") is None
    else:
        assert meta.stuff_classes[background] == meta.prompt_class_names[background] == "background"


def test_official_background_words_and_prompt_names():
    voc21, ctx60, coco = (MetadataCatalog.get(n) for n in ("voc21_val", "context60_val",
                                                            "coco_object_val"))
    assert len(voc21.background_names) == 33 and voc21.background_names[:3] == ["background", "sky", "wall"]
    assert ctx60.background_names == ["background"]
    assert len(coco.background_names) == 107 and coco.background_names[0] == "textile"
    assert set(builtin_classes.COCO_STUFF_CLASSES[80:]) <= set(coco.background_names)
    for name in ("voc20_val", "voc_zs_val", "voc21_val_crop224"):  # 'tv', not 'tvmonitor'
        meta = MetadataCatalog.get(name)
        assert meta.prompt_class_names[-1] == "tv" and meta.stuff_classes[-1] == "tvmonitor"
    ctx = MetadataCatalog.get("context59_val")
    table = ctx.stuff_classes.index("table")
    assert ctx.prompt_class_names[table] == "diningtable"
    assert MetadataCatalog.get("context60_val").prompt_class_names[table + 1] == "diningtable"
    assert MetadataCatalog.get("ade150_val").prompt_class_names[7] == "bed "
    coco_stuff = MetadataCatalog.get("coco_stuff_zs_val")
    assert coco_stuff.prompt_class_names == coco_stuff.stuff_classes


@pytest.mark.parametrize("base", CROP_BASES)
@pytest.mark.parametrize("size", [224, 336])
def test_center_crop_variants(base, size):
    meta, crop = MetadataCatalog.get(base), MetadataCatalog.get(f"{base}_crop{size}")
    assert crop.center_crop == size and meta.get("center_crop") is None
    for key in ("stuff_classes", "seen_classes", "unseen_classes", "ignore_label", "prompt_class_names"):
        assert crop.get(key) == meta.get(key), key
    root = os.path.join(datasets_root(), "")
    for key in ("image_root", "sem_seg_root"):
        assert crop.get(key) == os.path.join(datasets_root(), f"crop{size}", meta.get(key)[len(root):])


@pytest.mark.parametrize("suite, name, folder, command", [
    ("voc", "voc21_val", "annotations_voc21/val", "python datasets/prepare_voc21.py"),
    ("context59", "context60_val", "annotations_ctx60/val", "python datasets/prepare_context60.py"),
    ("context59", "context459_val", "annotations_ctx459/val", "python datasets/prepare_context459.py"),
    ("coco_stuff", "coco_object_val", "coco_object_ldvc/val2017", "python datasets/prepare_coco_object.py"),
    ("ade150", "ade_full_val", "annotations_ldvc/validation", "python datasets/prepare_ade_full.py"),
    ("voc", "voc20_val_crop336", "crop336/VOCdevkit", "python datasets/prepare_voc.py --center-crop 336"),
    ("cityscapes", "cityscapes_val", "cityscapes/gtFine_ldvc/val", "python datasets/prepare_cityscapes.py"),
])
def test_new_sets_name_their_prepare_command(tmp_path, suite, name, folder, command):
    test_missing_label_folder_names_folder_and_command(tmp_path, suite, name, folder, command)


def test_16bit_and_crop_sets_load_from_prepared_trees(tmp_path):
    ctx = tmp_path / "VOCdevkit" / "VOC2010"
    _write(str(ctx / "JPEGImages" / "2008_000002.jpg"), image=(7, 5))
    _write(str(ctx / "annotations_ctx459" / "val" / "2008_000002.png"),
           label=np.full((5, 7), 458, np.uint16))
    crop = tmp_path / "crop224" / "VOCdevkit" / "VOC2010"
    Image.new("RGB", (224, 224)).save(_mkdirs(crop / "JPEGImages") / "2008_000002.png")
    _write(str(crop / "annotations_ctx459" / "val" / "2008_000002.png"),
           label=np.full((224, 224), 65535, np.uint16))
    prefix = _prefix()
    register_context.register_all_context(str(tmp_path), prefix)
    for name, image in (("context459_val", ctx / "JPEGImages" / "2008_000002.jpg"),
                        ("context459_val_crop224", crop / "JPEGImages" / "2008_000002.png")):
        (record,) = DatasetCatalog.get(prefix + name)
        assert record["file_name"] == str(image)
        assert np.array(Image.open(record["sem_seg_file_name"])).max() in (458, 65535)


def _mkdirs(path):
    os.makedirs(path, exist_ok=True)
    return path


@pytest.mark.parametrize("official, clean, files_of", [
    ("voc21_val_official", "voc21_val", "voc21_val"),
    ("coco_object_val_official", "coco_object_val", "coco_stuff_zs_val"),
])
@pytest.mark.parametrize("suffix", ["", "_crop224", "_crop336"])
def test_official_variants_keep_the_class_metadata_and_read_the_source_files(official, clean, files_of,
                                                                             suffix):
    meta, ref, files = (MetadataCatalog.get(n + suffix) for n in (official, clean, files_of))
    for key in ("stuff_classes", "seen_classes", "unseen_classes", "ignore_label", "prompt_class_names",
                "background_class", "background_names", "center_crop"):
        assert meta.get(key) == ref.get(key), key
    assert (meta.image_root, meta.sem_seg_root) == (files.image_root, files.sem_seg_root)


def test_official_label_maps_follow_the_official_script():
    voc = MetadataCatalog.get("voc21_val_official")
    assert voc.gt_label_map == {255: 0} and voc.get("no_object_labels") is None  # default: {0, 255}
    coco = MetadataCatalog.get("coco_object_val_official")
    assert builtin_classes.COCO_STUFF_CLASSES[80] == "banner"  # scored as background by n_class 81
    assert coco.background_class == 80 and coco.stuff_classes[:80] == list(builtin_classes.COCO_STUFF_CLASSES[:80])
    expected = {**{i: 255 for i in range(81, 171)}, 255: 80}  # 0..80 unchanged
    assert coco.gt_label_map == expected and coco.no_object_labels == [255]
    for clean in ("voc21_val", "coco_object_val", "coco_stuff_zs_val_crop224"):
        assert MetadataCatalog.get(clean).get("gt_label_map") is None


def test_coco_object_harness_counts_unlabelled_as_background():
    # GroupViT's cvt_coco_object.py (used by SCLIP, NACLIP, ClearCLIP, ProxyCLIP): every value that
    # is not a thing, 255 included, becomes background; nothing is ignored.
    harness, clean = MetadataCatalog.get("coco_object_val_harness"), MetadataCatalog.get("coco_object_val")
    assert harness.gt_label_map == {255: 80} and harness.stuff_classes[80] == "background"
    for key in ("stuff_classes", "unseen_classes", "background_class", "image_root", "sem_seg_root"):
        assert harness.get(key) == clean.get(key), key
