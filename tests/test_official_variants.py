"""CLIPtrase's official-GT variants (``voc21_val_official``, ``coco_object_val_official``) end to end on
small generated trees: raw dataset files -> preparation script -> registration -> evaluator, against
confusion matrices counted here one pixel at a time from the raw files and the official script's
rules as SEED_SYSTEMS §2.2 states them (VOC-21: every 255 is background; COCO-Object: the 171-class
maps with 81 classes, 255 -> background 80, labels >= 81 not scored; an image whose map is all 255
in the official script's source maps is skipped)."""
import importlib
import os
import sys
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from ldvc_d2.data.datasets import register_coco_stuff, register_voc
from ldvc_d2.evaluation import ZeroShotSemSegEvaluator
from detectron2.data import DatasetCatalog, MetadataCatalog  # after ldvc_d2: its compat shims
from tests.conftest import REPO
from tests.fake_datasets import (VOC_VAL, coco_contiguous, make_coco_stuff_tree, make_voc_tree,
                                 write_png)

sys.path.insert(0, os.path.join(REPO, "datasets"))
CountWarning = importlib.import_module("_prep_utils").CountWarning


def _prepare(script, root):
    with pytest.warns(CountWarning):  # fake trees never have the official image counts
        assert importlib.import_module(script).main(["--root", str(root), "--workers", "1"]) == 0


def _evaluate(name, num_classes, seed=0):
    """Random predictions for every image of ``name``; returns (evaluator after process, preds)."""
    rng = np.random.default_rng(seed)
    evaluator = ZeroShotSemSegEvaluator(name, distributed=False, miou_rule="cliptrase",
                                        skip_no_object_images=True)
    preds = {}
    for record in DatasetCatalog.get(name):
        h, w = np.asarray(Image.open(record["sem_seg_file_name"])).shape
        preds[record["image_id"]] = pred = rng.integers(0, num_classes, size=(h, w))
        scores = torch.nn.functional.one_hot(torch.as_tensor(pred), num_classes).permute(2, 0, 1).float()
        evaluator.process([{"file_name": record["file_name"]}], [{"sem_seg": scores}])
    return evaluator, preds


def _count(gts, preds, num_classes, ignore=255):
    """(C+1, C+1) counts of (gt, pred) pixel pairs, one pixel at a time; ignored gt -> last row."""
    conf = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for key, gt in gts.items():
        for g, p in zip(gt.reshape(-1), preds[key].reshape(-1)):
            conf[num_classes if g == ignore else g, p] += 1
    return conf


def _cleanup(prefix):
    for name in [n for n in DatasetCatalog.list() if n.startswith(prefix)]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_voc21_official_scores_boundary_as_background_and_skips_empty_images(tmp_path):
    extra = "2007_000005"  # only background and boundary: no object in the 20-class maps
    raw = make_voc_tree(str(tmp_path), voc_val=VOC_VAL + [extra], all_ids=True)
    raw[extra] = np.where(np.arange(raw[extra].size).reshape(raw[extra].shape) % 2, 0, 255)
    write_png(str(tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{extra}.png"),
              raw[extra], palette=True)
    _prepare("prepare_voc21", tmp_path)
    prefix = f"t{uuid.uuid4().hex[:6]}_"
    register_voc.register_all_voc(str(tmp_path), prefix)
    try:
        evaluator, preds = _evaluate(prefix + "voc21_val_official", 21)
        official = {i: np.where(raw[i] == 255, 0, raw[i]) for i in VOC_VAL}  # the extra one: skipped
        expected = _count(official, preds, 21)
        np.testing.assert_array_equal(evaluator.conf_matrix, expected)
        assert expected[-1].sum() == 0 and expected[0].sum() > sum((raw[i] == 0).sum() for i in VOC_VAL)
        clean, _ = _evaluate(prefix + "voc21_val", 21)  # the clean set ignores the boundary
        assert clean.conf_matrix[-1].sum() == sum((raw[i] == 255).sum() for i in VOC_VAL) > 0
    finally:
        _cleanup(prefix)


def test_coco_object_official_scores_the_171_class_maps_with_81_classes(tmp_path):
    names = ["000000000139", "000000000285", "000000000632", "000000000724", "000000000776"]
    raw = make_coco_stuff_tree(str(tmp_path), {"train2017": ["000000000009"], "val2017": names}, size=(5, 6),
                               stamp=(0, 89, 91, 92, 181, 255))  # person, toothbrush, banner, ..., wood
    raw[names[2]] = np.full((5, 6), 255)  # all unlabelled: the official script skips it
    raw[names[3]] = np.r_[[91, 100, 181, 255] * 7, 150, 92].reshape(5, 6)  # stuff only: kept
    raw[names[4]] = np.r_[[91, 255] * 15].reshape(5, 6)  # banner (80) and unlabelled only: kept
    for name in names[2:]:
        write_png(str(tmp_path / "coco" / "stuffthingmaps_trainval2017" / "val2017" / f"{name}.png"), raw[name])
    _prepare("prepare_coco_stuff", tmp_path)
    prefix = f"t{uuid.uuid4().hex[:6]}_"
    register_coco_stuff.register_all_coco_stuff(str(tmp_path), prefix)
    try:
        evaluator, preds = _evaluate(prefix + "coco_object_val_official", 81)
        official = {}
        for name in (names[0], names[1], names[3], names[4]):
            index = coco_contiguous(raw[name])  # the 171-class maps the official script reads
            official[name] = np.where(index == 255, 80, np.where(index <= 80, index, 255))
        expected = _count(official, preds, 81)
        np.testing.assert_array_equal(evaluator.conf_matrix, expected)
        assert expected[80].sum() > 0 and expected[-1].sum() > 0  # banner/unlabelled in, 81.. out
        metrics = evaluator.evaluate()["sem_seg"]
        assert metrics["IoU-person"] == pytest.approx(
            100 * expected[0, 0] / (expected[0, :81].sum() + expected[:81, 0].sum() - expected[0, 0] + 0.01))
    finally:
        _cleanup(prefix)
