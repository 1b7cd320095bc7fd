"""The evaluator's options for CLIPtrase's official scoring: the "cliptrase" rule (configs/metric.py)
against a hand-computed confusion matrix and an independent per-pixel computation, the skip of images
without an object label, and the metadata label map (tests/test_official_variants.py runs both on
the registered official variants)."""
import json
import math
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

import ldvc_d2  # noqa: F401  (applies the detectron2 compat shims before detectron2 is imported)
from detectron2.data import DatasetCatalog, MetadataCatalog
from ldvc_d2.evaluation import ZeroShotSemSegEvaluator, zero_shot_metrics
from tests.test_evaluator import CLASSES, _predictions, dataset  # noqa: F401  (dataset: a fixture)


def test_cliptrase_rule_hand_computed_confusion_matrix():
    # The matrix of test_hand_computed_confusion_matrix, scored as CLIPtrase's metric.py does.
    conf = np.array([[6, 1, 1, 0, 0], [2, 4, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0],
                     [5, 0, 3, 0, 0]])
    names = ["a", "b", "c", "d"]
    res = zero_shot_metrics(conf, [0, 2], [1, 3], names, miou_rule="cliptrase")
    # IoU = TP / (GT + pred - TP + 0.01), only for the classes in the ground truth (a, b).
    iou_a, iou_b = 6 / (8 + 8 - 6 + 0.01), 4 / (6 + 5 - 4 + 0.01)
    assert res["IoU-a"] == pytest.approx(100 * iou_a) and res["IoU-b"] == pytest.approx(100 * iou_b)
    assert math.isnan(res["IoU-c"]) and math.isnan(res["IoU-d"])  # c is predicted once: still left out
    assert res["mIoU"] == pytest.approx(100 * (iou_a + iou_b) / 2)
    assert res["mIoU(S)"] == pytest.approx(100 * iou_a) and res["mIoU(U)"] == pytest.approx(100 * iou_b)
    # Accuracy = TP / (GT + 0.01) for every class: the absent c and d count as 0 in mAcc.
    assert res["ACC-a"] == pytest.approx(100 * 6 / 8.01) and res["ACC-c"] == res["ACC-d"] == 0.0
    assert res["mAcc"] == pytest.approx(100 * (6 / 8.01 + 4 / 6.01 + 0 + 0) / 4)
    assert res["pAcc"] == pytest.approx(100 * 10 / 14)
    assert res["fwIoU"] == pytest.approx(100 * (8 / 14 * iou_a + 6 / 14 * iou_b))
    present = zero_shot_metrics(conf, [0, 2], [1, 3], names, miou_rule="present")
    assert present["mIoU"] - res["mIoU"] == pytest.approx(100 * ((0.6 - iou_a) + (4 / 7 - iou_b)) / 2)
    assert present["mAcc"] > 2 * res["mAcc"]  # present: mean over a and b only


def _official_scores(gts, preds, n_class):
    """CLIPtrase's metric.py formulas, one class at a time on the pixels with 0 <= label < n_class."""
    tp, gt_n, pred_n = np.zeros(n_class), np.zeros(n_class), np.zeros(n_class)
    for g, p in zip(gts, preds):
        valid = (g >= 0) & (g < n_class)
        for c in range(n_class):
            tp[c] += ((g == c) & (p == c) & valid).sum()
            gt_n[c] += ((g == c) & valid).sum()
            pred_n[c] += ((p == c) & valid).sum()
    iou = tp / (gt_n + pred_n - tp + 0.01)
    freq = gt_n / gt_n.sum()
    return {"pAcc": 100 * tp.sum() / gt_n.sum(), "mAcc": 100 * np.mean(tp / (gt_n + 0.01)),
            "fwIoU": 100 * (freq[freq > 0] * iou[freq > 0]).sum(), "mIoU": 100 * iou[gt_n > 0].mean()}


def test_evaluator_cliptrase_rule_matches_official_formulas(dataset):
    inputs, outputs = _predictions(dataset)
    evaluator = ZeroShotSemSegEvaluator(dataset, distributed=False, miou_rule="cliptrase")
    evaluator.process(inputs, outputs)
    res = evaluator.evaluate()["sem_seg"]
    gts = [np.array(Image.open(r["sem_seg_file_name"])).astype(np.int64) for r in DatasetCatalog.get(dataset)]
    expected = _official_scores(gts, [o["sem_seg"].argmax(0).numpy() for o in outputs], len(CLASSES))
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, abs=1e-9), key
    assert res["ACC-wall"] == 0.0 and math.isnan(res["IoU-sky"])  # never in the ground truth


def _register_with_background(tmp_path, gts, **meta):
    """A 3-class set (background = class 2) whose ground truths are ``gts``; return its name."""
    records = []
    for i, gt in enumerate(gts):
        Image.fromarray(np.asarray(gt, np.uint8)).save(tmp_path / f"bg_{i}.png")
        records.append({"file_name": f"bg_{i}.jpg", "sem_seg_file_name": str(tmp_path / f"bg_{i}.png")})
    name = f"ldvc_test_evaluator_bg_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=["cat", "dog", "background"], seen_classes=[],
                                  unseen_classes=[0, 1, 2], ignore_label=255, background_class=2, **meta)
    return name


def _one_hot(pred):
    return torch.nn.functional.one_hot(torch.as_tensor(pred), 3).permute(2, 0, 1).float()


def test_skip_no_object_images_is_counted_and_reported(tmp_path, caplog):
    gts = [[[0, 2], [255, 1]], [[2, 2], [255, 2]], [[255, 255], [255, 255]], [[2, 1], [1, 1]]]
    preds = [[[0, 0], [1, 1]], [[0, 1], [2, 2]], [[1, 1], [1, 1]], [[2, 2], [1, 0]]]
    name = _register_with_background(tmp_path, gts)
    try:
        for skip, kept in ((False, [0, 1, 2, 3]), (True, [0, 3])):  # 1: background only, 2: ignore only
            out = tmp_path / f"skip_{skip}"
            evaluator = ZeroShotSemSegEvaluator(name, distributed=False, output_dir=str(out),
                                                skip_no_object_images=skip)
            for i, pred in enumerate(preds):
                evaluator.process([{"file_name": f"bg_{i}.jpg"}], [{"sem_seg": _one_hot(pred)}])
            expected = np.zeros((4, 4), np.int64)  # (gt, pred) pairs counted one pixel at a time
            for i in kept:
                for g, p in zip(np.ravel(gts[i]), np.ravel(preds[i])):
                    expected[3 if g == 255 else g, p] += 1
            np.testing.assert_array_equal(evaluator.conf_matrix, expected)
            with caplog.at_level("INFO"):
                evaluator.evaluate()
            saved = json.loads((out / "sem_seg_metrics.json").read_text())
            assert saved["num_images"] == len(kept) and saved["skip_no_object_images"] is skip
            assert saved["num_skipped_images"] == 4 - len(kept)
        assert "2 images (2 skipped: no label outside [2, 255])" in caplog.text
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_label_map_and_no_object_labels_from_metadata(tmp_path):
    """gt_label_map is applied before counting (unlisted labels unchanged); no_object_labels replaces
    the default {background, ignore} of the skip; a label the map leaves invalid is an error."""
    gts = [[[7, 9], [0, 255]], [[2, 2], [255, 2]], [[255, 255], [255, 255]]]
    name = _register_with_background(tmp_path, gts, gt_label_map={9: 255, 255: 2, 7: 1},
                                     no_object_labels=[255])
    unmapped_7 = _register_with_background(tmp_path, gts, gt_label_map={9: 255, 255: 2})
    try:
        evaluator = ZeroShotSemSegEvaluator(name, distributed=False, skip_no_object_images=True)
        pred = [[1, 0], [0, 2]]
        for i in range(3):
            evaluator.process([{"file_name": f"bg_{i}.jpg"}], [{"sem_seg": _one_hot(pred)}])
        # Image 1 (background only) is kept, as no_object_labels is [255]; image 2 (all 255) is skipped.
        mapped = [[[1, 255], [0, 2]], [[2, 2], [2, 2]]]
        expected = np.zeros((4, 4), np.int64)
        for gt in mapped:
            for g, p in zip(np.ravel(gt), np.ravel(pred)):
                expected[3 if g == 255 else g, p] += 1
        np.testing.assert_array_equal(evaluator.conf_matrix, expected)
        assert evaluator.evaluate()["sem_seg"]["pAcc"] == pytest.approx(100 * 4 / 7)
        with pytest.raises(ValueError, match=r"bg_0\.png.*\[7\] after the metadata 'gt_label_map'"):
            ZeroShotSemSegEvaluator(unmapped_7, distributed=False).process(
                [{"file_name": "bg_0.jpg"}], [{"sem_seg": _one_hot(pred)}])
    finally:
        for registered in (name, unmapped_7):
            DatasetCatalog.remove(registered)
            MetadataCatalog.remove(registered)


@pytest.mark.parametrize("bad, match", [([3, 4], "must be a dict of int -> int"), ({-1: 0}, r"negative labels \[-1\]")])
def test_bad_label_map_names_dataset_and_key(tmp_path, bad, match):
    name = _register_with_background(tmp_path, [[[0, 1]]], gt_label_map=bad)
    try:
        with pytest.raises(ValueError, match=f"'{name}': metadata 'gt_label_map'.*{match}"):
            ZeroShotSemSegEvaluator(name, distributed=False)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
