"""Datasets with more than 255 classes (16-bit label PNGs, ignore 65535) end to end: labels read and
resized as 16-bit, the training label table past 255, distinct colours, the confusion matrix file,
tools/check_dataset.py with a gt_label_map, and an 847-class set trained and evaluated in-process."""
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ldvc_d2.data import register_zero_shot_folder
from ldvc_d2.data.mapper import LabelResizeTransform
from ldvc_d2.evaluation import load_confusion_matrix
from ldvc_d2.evaluation.confusion_file import save_confusion_matrix
from ldvc_d2.utils.io import read_label
from ldvc_d2.utils.visualization import vocabulary_colors
from tests.conftest import tiny_cfg
from tests.scripts import load_script

NUM = 847
IGNORE = 65535
CLASSES = [f"thing{i}" for i in range(NUM)]
UNSEEN = [3, 300, 846]


def _save16(path, label):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(label, np.uint16)).save(path)


def test_read_label_keeps_16_bit_values(tmp_path):
    label = np.array([[0, 255, 256], [846, 65535, 7]], np.uint16)
    _save16(str(tmp_path / "a.png"), label)
    got = read_label(str(tmp_path / "a.png"))
    assert got.dtype == np.uint16 and np.array_equal(got, label)
    _save16(str(tmp_path / "b.png"), np.array([[0, 254]]))  # 16-bit file, small values: uint8 as before
    assert read_label(str(tmp_path / "b.png")).dtype == np.uint8
    Image.fromarray(np.array([[70000, 1]], np.int32), mode="I").save(tmp_path / "c.tif")  # PNG has no 32 bits
    with pytest.raises(ValueError, match=r"c.tif' has values 1..70000"):
        read_label(str(tmp_path / "c.tif"))


def test_16_bit_label_resize_takes_the_8_bit_pixels():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 200, (13, 17)).astype(np.uint8)
    for new_h, new_w in ((29, 40), (6, 7), (13, 50)):
        t = LabelResizeTransform(13, 17, new_h, new_w)
        reference = np.asarray(Image.fromarray(small).resize((new_w, new_h), Image.NEAREST))  # Pillow, 8-bit
        got = t.apply_segmentation(small.astype(np.uint16) + 600)
        assert got.dtype == np.uint16 and np.array_equal(got.astype(int), reference.astype(int) + 600)
    # 2x nearest upsampling by hand: every pixel becomes a 2x2 block
    t = LabelResizeTransform(2, 2, 4, 4)
    assert t.apply_segmentation(np.array([[300, 65535], [846, 0]], np.uint16)).tolist() == [
        [300, 300, 65535, 65535], [300, 300, 65535, 65535], [846, 846, 0, 0], [846, 846, 0, 0]]


def test_class_colours_are_distinct_and_the_registered_ones():
    colors = vocabulary_colors(4096)
    assert len(set(colors)) == 4096
    # the PASCAL VOC palette (published colours of VOC's first classes), class k = entry k + 1
    assert colors[:4] == [(128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]
    registered = MetadataCatalog.get("ade_full_val").stuff_colors
    assert [list(c) for c in vocabulary_colors(NUM)] == registered  # the demo draws the dataset's colours


def test_confusion_file_round_trip_and_refuses_pickles(tmp_path):
    conf = np.random.default_rng(1).integers(0, 1000, (NUM + 1, NUM + 1))
    path = save_confusion_matrix(str(tmp_path), conf)
    assert os.listdir(tmp_path) == ["sem_seg_confusion.npz"] and os.path.getsize(path) < 4 * conf.size
    assert np.array_equal(load_confusion_matrix(str(tmp_path), NUM), conf)
    with pytest.raises(ValueError, match="expected 847x847 for 846 classes"):
        load_confusion_matrix(path, NUM - 1)
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, confusion_matrix=np.array([{"code": 1}], dtype=object))  # a pickled object array
    with pytest.raises(ValueError, match="bad.npz"):
        load_confusion_matrix(bad)


def _make_set(root, name, count, seed):
    """``count`` 40x48 images with 16-bit labels over the 847 classes (some above 255) and 65535."""
    rng = np.random.default_rng(seed)
    labels = {}
    for i in range(count):
        stem = f"{name}{i}"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            os.path.join(root, name, "images", stem + ".jpg"))
        label = rng.choice(np.r_[0:NUM, IGNORE], size=(40, 48)).astype(np.uint16)
        label[:20, :24] = 600 + i  # a large patch of a class above 255, so crops keep some
        _save16(os.path.join(root, name, "labels", stem + ".png"), label)
        labels[stem] = label
    return labels


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("many"))
    names, labels = {}, {}
    for split, count, seed in (("train", 3, 0), ("val", 2, 1)):
        os.makedirs(os.path.join(root, split, "images"))
        labels[split] = _make_set(root, split, count, seed)
        names[split] = register_zero_shot_folder(f"ldvc_test_many_{split}", os.path.join(root, split, "images"),
                                                 os.path.join(root, split, "labels"), CLASSES, UNSEEN,
                                                 ignore_label=IGNORE)
    yield names, labels
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_check_dataset_counts_16_bit_labels_and_applies_the_label_map(sets, capsys):
    names, labels = sets
    check = load_script("tools/check_dataset.py")
    report = check.check_dataset(DatasetCatalog.get(names["train"]), NUM, IGNORE, progress=False)
    values = np.concatenate([v.ravel() for v in labels["train"].values()]).astype(np.int64)
    assert report["problems"] == [] and report["pixels"] == np.bincount(values[values != IGNORE], minlength=NUM).tolist()
    assert report["ignore_pixels"] == int((values == IGNORE).sum())
    mapped = check.check_dataset(DatasetCatalog.get(names["train"]), NUM, IGNORE, progress=False,
                                 label_map={IGNORE: 5, 600: IGNORE})
    remapped = np.where(values == IGNORE, 5, np.where(values == 600, IGNORE, values))
    assert mapped["pixels"] == np.bincount(remapped[remapped != IGNORE], minlength=NUM).tolist()
    assert mapped["ignore_pixels"] == int((remapped == IGNORE).sum())
    bad = check.check_dataset(DatasetCatalog.get(names["train"]), NUM, IGNORE, progress=False, label_map={0: 900})
    assert len(bad["problems"]) == 3 and all("900" in p and "gt_label_map" in p for p in bad["problems"])
    MetadataCatalog.get(names["val"]).set(gt_label_map={IGNORE: 0})
    try:
        assert check.main(["--dataset", names["val"]]) == 0
    finally:
        del MetadataCatalog.get(names["val"]).gt_label_map
    printed = capsys.readouterr().out
    assert "847 classes" in printed and "ignore label 65535: 0 pixels" in printed and "gt_label_map" in printed


def test_847_classes_train_and_evaluate(sets, tmp_path):
    names, labels = sets
    train_net = load_script("train_net.py")
    cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", f"('{names['train']}',)", "DATASETS.TEST",
                   f"('{names['val']}',)", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", str(IGNORE), "SOLVER.MAX_ITER", "2",
                   "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
                   "INPUT.TRAIN_SCALE", "(64, 32)", "INPUT.CROP.SIZE", "(32, 32)", "INPUT.MIN_SIZE_TEST", "32",
                   "INPUT.MAX_SIZE_TEST", "128", "MODEL.SEGMENTOR.INFERENCE.CROP_SIZE", "32",
                   "MODEL.SEGMENTOR.INFERENCE.STRIDE", "24", "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "1000",
                   "OUTPUT_DIR", str(tmp_path / "out"))
    torch.manual_seed(0)
    trainer = train_net.Trainer(cfg)
    model = trainer.model
    seen = [i for i in range(NUM) if i not in UNSEEN]
    assert model.train_class_names == [CLASSES[i] for i in seen]
    # the training view of a 16-bit label: class k -> its rank among the seen classes, unseen and 65535 ignored
    record = DatasetCatalog.get(names["train"])[0]
    mapped = trainer.data_loader.mapper(record)
    _, targets = model.training_batch([mapped])
    raw = mapped["sem_seg"].numpy()
    rank = {k: r for r, k in enumerate(seen)}
    expected = np.vectorize(lambda v: rank.get(int(v), IGNORE))(raw)
    h, w = raw.shape
    assert set(np.unique(raw)) <= set(np.unique(labels["train"][record["image_id"]]))
    assert (raw > 255).any() and np.array_equal(targets[0, :h, :w].numpy(), expected)
    trainer.train()
    assert trainer.iter == 2

    evaluator = train_net.Trainer.build_evaluator(cfg, names["val"])
    results = train_net.Trainer.test(cfg, model, [evaluator])["sem_seg"]
    conf = load_confusion_matrix(str(tmp_path / "out" / "inference" / names["val"]), NUM)
    gt = np.concatenate([v.ravel() for v in labels["val"].values()]).astype(np.int64)
    assert np.array_equal(conf.sum(1), np.bincount(np.where(gt == IGNORE, NUM, gt), minlength=NUM + 1))
    assert results["pAcc"] == pytest.approx(100 * np.trace(conf[:NUM, :NUM]) / conf[:NUM].sum())
