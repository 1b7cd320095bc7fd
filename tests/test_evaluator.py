"""ZeroShotSemSegEvaluator against hand-computed numbers and an independent per-pixel computation."""
import json
import math
import os
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

import ldvc_d2  # noqa: F401  (applies the detectron2 compat shims before detectron2 is imported)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from ldvc_d2.evaluation import ZeroShotSemSegEvaluator, harmonic_iou, load_confusion_matrix, zero_shot_metrics

CLASSES = ["road", "tree", "cow", "sky", "wall"]
SEEN, UNSEEN = [0, 1, 3], [2, 4]
GT_CLASSES = [0, 1, 2]  # "sky" (3) is only predicted, "wall" (4) is never in gt nor predicted
SIZES = [(7, 9), (6, 5), (8, 8), (5, 11)]


def _register(tmp_path, **meta_overrides):
    """Register a fake dataset of index PNGs (with 255 pixels); return its name."""
    rng = np.random.default_rng(0)
    records = []
    for i, (h, w) in enumerate(SIZES):
        gt = rng.choice(GT_CLASSES, size=(h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.2] = 255
        gt_file = str(tmp_path / f"gt_{i}.png")
        Image.fromarray(gt).save(gt_file)
        records.append({"file_name": str(tmp_path / f"img_{i}.jpg"), "sem_seg_file_name": gt_file,
                        "height": h, "width": w})
    name = f"ldvc_test_evaluator_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    meta = dict(stuff_classes=CLASSES, seen_classes=SEEN, unseen_classes=UNSEEN, ignore_label=255)
    meta.update(meta_overrides)
    MetadataCatalog.get(name).set(**{k: v for k, v in meta.items() if v is not None})
    return name


@pytest.fixture
def dataset(tmp_path):
    name = _register(tmp_path)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _predictions(name, seed=1):
    """Random (C, H, W) scores per image; "wall" is never the arg-max."""
    gen = torch.Generator().manual_seed(seed)
    inputs, outputs = [], []
    for record in DatasetCatalog.get(name):
        scores = torch.rand(len(CLASSES), record["height"], record["width"], generator=gen)
        scores[4] -= 2.0
        inputs.append({"file_name": record["file_name"]})
        outputs.append({"sem_seg": scores})
    return inputs, outputs


def _reference_metrics(name, outputs):
    """Per-pixel TP/FP/FN with boolean masks, one class at a time (no confusion matrix)."""
    gts = [np.array(Image.open(r["sem_seg_file_name"])).astype(np.int64) for r in DatasetCatalog.get(name)]
    preds = [o["sem_seg"].argmax(0).numpy() for o in outputs]
    valid = [g != 255 for g in gts]
    n_valid = sum(v.sum() for v in valid)
    ref, ious, accs, fw = {}, {}, {}, 0.0
    for c, cname in enumerate(CLASSES):
        tp = sum(((g == c) & (p == c) & v).sum() for g, p, v in zip(gts, preds, valid))
        fp = sum(((g != c) & (p == c) & v).sum() for g, p, v in zip(gts, preds, valid))
        fn = sum(((g == c) & (p != c) & v).sum() for g, p, v in zip(gts, preds, valid))
        ious[c] = tp / (tp + fp + fn) * 100 if tp + fp + fn else math.nan
        accs[c] = tp / (tp + fn) * 100 if tp + fn else math.nan
        if tp + fn:
            fw += (tp + fn) / n_valid * ious[c]
        ref[f"IoU-{cname}"], ref[f"ACC-{cname}"] = ious[c], accs[c]

    def mean(values):
        values = [x for x in values if not math.isnan(x)]
        return sum(values) / len(values) if values else math.nan

    ref["pAcc"] = sum(((g == p) & v).sum() for g, p, v in zip(gts, preds, valid)) / n_valid * 100
    ref["mAcc"] = mean(accs.values())
    ref["fwIoU"] = fw
    ref["mIoU"] = mean(ious.values())
    ref["mIoU(S)"] = mean([ious[c] for c in SEEN])
    ref["mIoU(U)"] = mean([ious[c] for c in UNSEEN])
    s, u = ref["mIoU(S)"], ref["mIoU(U)"]
    ref["hIoU"] = 2 * s * u / (s + u)
    return ref


def _assert_metrics_equal(actual, expected):
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, abs=1e-9), key


def test_matches_independent_per_pixel_computation(dataset, tmp_path, caplog):
    out_dir = tmp_path / "out"
    evaluator = ZeroShotSemSegEvaluator(dataset, distributed=False, output_dir=str(out_dir),
                                        protocol="whole image, test-protocol-42")
    evaluator.reset()
    inputs, outputs = _predictions(dataset)
    with caplog.at_level("INFO"):
        for inp, out in zip(inputs, outputs):
            evaluator.process([inp], [out])
        results = evaluator.evaluate()["sem_seg"]
    expected = _reference_metrics(dataset, outputs)
    _assert_metrics_equal(results, expected)
    # The data was built so both NaN rules are exercised.
    assert results["IoU-sky"] == 0.0 and math.isnan(results["IoU-wall"])
    assert "test-protocol-42" in caplog.text and "3 seen, 2 unseen" in caplog.text

    saved = json.loads((out_dir / "sem_seg_metrics.json").read_text(),
                       parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert sorted(os.listdir(out_dir)) == ["sem_seg_confusion.npz", "sem_seg_metrics.json"]  # no temp file
    assert saved["per_class_iou"]["wall"] is None
    assert saved["metrics"]["hIoU"] == pytest.approx(expected["hIoU"])
    assert "confusion_matrix" not in saved and saved["confusion_matrix_file"] == "sem_seg_confusion.npz"
    conf = load_confusion_matrix(str(out_dir), num_classes=5)
    assert saved["confusion_matrix_shape"] == [6, 6] and conf.dtype == np.int64
    n_ignored = sum((np.array(Image.open(r["sem_seg_file_name"])) == 255).sum()
                    for r in DatasetCatalog.get(dataset))
    assert conf.shape == (6, 6) and conf[-1].sum() == n_ignored and conf.sum() == sum(h * w for h, w in SIZES)
    assert saved["protocol"] == "whole image, test-protocol-42"


def test_hand_computed_confusion_matrix():
    # Rows = ground truth, columns = prediction; classes 0..3, last row/col = ignored pixels.
    conf = np.array([
        [6, 1, 1, 0, 0],  # gt 0: 8 pixels
        [2, 4, 0, 0, 0],  # gt 1: 6 pixels
        [0, 0, 0, 0, 0],  # gt 2: absent from gt, predicted once
        [0, 0, 0, 0, 0],  # gt 3: absent from gt and never predicted
        [5, 0, 3, 0, 0],  # ignored pixels: must not count anywhere
    ])
    # Predicted pixels per class (non-ignored): 8, 5, 1, 0.
    # IoU0 = 6 / (8 + 8 - 6) = 0.6;  IoU1 = 4 / (6 + 5 - 4) = 4/7
    # IoU2 = 0 / (0 + 1 - 0) = 0 (predicted, absent from gt: counts as 0)
    # IoU3 = 0 / 0 = NaN (absent from both: left out of means)
    # (detectron2's SemSegEvaluator would leave class 2 out as well: mIoU (0.6 + 4/7) / 2.)
    res = zero_shot_metrics(conf, seen=[0, 2], unseen=[1, 3], class_names=["a", "b", "c", "d"])
    assert res["IoU-a"] == pytest.approx(60.0)
    assert res["IoU-b"] == pytest.approx(400 / 7)
    assert res["IoU-c"] == 0.0 and math.isnan(res["IoU-d"])
    assert res["mIoU"] == pytest.approx((60 + 400 / 7 + 0) / 3)  # 39.05
    assert res["mIoU(S)"] == pytest.approx(30.0)  # (60 + 0) / 2
    assert res["mIoU(U)"] == pytest.approx(400 / 7)  # class 3 is NaN, left out
    s, u = 30.0, 400 / 7
    assert res["hIoU"] == pytest.approx(2 * s * u / (s + u))  # 39.34
    assert res["pAcc"] == pytest.approx(100 * 10 / 14)  # correct pixels / gt pixels
    assert res["ACC-a"] == pytest.approx(75.0) and res["ACC-b"] == pytest.approx(400 / 6)
    assert math.isnan(res["ACC-c"]) and math.isnan(res["ACC-d"])
    assert res["mAcc"] == pytest.approx((75 + 400 / 6) / 2)
    assert res["fwIoU"] == pytest.approx(100 * (8 / 14 * 0.6 + 6 / 14 * 4 / 7))  # 58.78
    # The (C, C) form gives the same numbers as (C+1, C+1).
    _assert_metrics_equal(zero_shot_metrics(conf[:4, :4], [0, 2], [1, 3], ["a", "b", "c", "d"]), res)


def test_harmonic_iou_edge_cases():
    assert harmonic_iou(0.0, 0.0) == 0.0
    assert harmonic_iou(50.0, 50.0) == pytest.approx(50.0)
    assert math.isnan(harmonic_iou(50.0, math.nan))
    res = zero_shot_metrics(np.eye(2, dtype=np.int64), seen=[0, 1], unseen=[], class_names=["a", "b"])
    assert res["mIoU(S)"] == 100.0 and math.isnan(res["mIoU(U)"]) and math.isnan(res["hIoU"])


def test_two_processes_equal_one(dataset, monkeypatch):
    inputs, outputs = _predictions(dataset)
    full = ZeroShotSemSegEvaluator(dataset, distributed=False)
    full.process(inputs, outputs)
    halves = [ZeroShotSemSegEvaluator(dataset) for _ in range(2)]
    halves[0].process(inputs[:2], outputs[:2])
    halves[1].process(inputs[2:], outputs[2:])
    np.testing.assert_array_equal(halves[0].conf_matrix + halves[1].conf_matrix, full.conf_matrix)

    states = [(h.conf_matrix, len(inputs[:2]), 0) for h in halves]
    monkeypatch.setattr(comm, "synchronize", lambda: None)
    monkeypatch.setattr(comm, "all_gather", lambda data, group=None: states)
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    _assert_metrics_equal(halves[0].evaluate()["sem_seg"], full.evaluate()["sem_seg"])
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert halves[1].evaluate() is None


def test_missing_seen_classes_names_dataset_and_key(tmp_path):
    name = _register(tmp_path, seen_classes=None)
    try:
        with pytest.raises(ValueError, match=f"{name}.*'seen_classes'.*set"):
            ZeroShotSemSegEvaluator(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_size_mismatch_names_file(dataset):
    evaluator = ZeroShotSemSegEvaluator(dataset, distributed=False)
    inputs, outputs = _predictions(dataset)
    outputs[1]["sem_seg"] = outputs[1]["sem_seg"][:, :-1]
    evaluator.process(inputs[:1], outputs[:1])
    with pytest.raises(ValueError, match=r"img_1\.jpg.*gt_1\.png"):
        evaluator.process(inputs[1:2], outputs[1:2])


def test_bad_ground_truth_labels_name_file(dataset):
    gt_file = DatasetCatalog.get(dataset)[0]["sem_seg_file_name"]
    Image.fromarray(np.full((7, 9), 7, dtype=np.uint8)).save(gt_file)  # label 7 >= 5 classes
    evaluator = ZeroShotSemSegEvaluator(dataset, distributed=False)
    inputs, outputs = _predictions(dataset)
    with pytest.raises(ValueError, match=r"gt_0\.png.*\[7\]"):
        evaluator.process(inputs[:1], outputs[:1])


def test_present_rule_hand_computed_confusion_matrix():
    # The matrix of test_hand_computed_confusion_matrix: class c (2) is predicted once but absent
    # from the ground truth (mmseg: IoU 0, counted), class d (3) is absent from both (NaN).
    conf = np.array([[6, 1, 1, 0, 0], [2, 4, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0],
                     [5, 0, 3, 0, 0]])
    names = ["a", "b", "c", "d"]
    mmseg = zero_shot_metrics(conf, [0, 2], [1, 3], names, miou_rule="mmseg")
    present = zero_shot_metrics(conf, [0, 2], [1, 3], names, miou_rule="present")
    # "present" (detectron2, CLIPtrase): IoU-c is left out like IoU-d.
    assert math.isnan(present["IoU-c"]) and math.isnan(present["IoU-d"]) and mmseg["IoU-c"] == 0.0
    assert present["mIoU"] == pytest.approx((60 + 400 / 7) / 2)  # 58.57, mmseg: 39.05
    assert mmseg["mIoU"] == pytest.approx((60 + 400 / 7) / 3)
    assert present["mIoU(S)"] == pytest.approx(60.0) and mmseg["mIoU(S)"] == pytest.approx(30.0)
    assert present["mIoU(U)"] == pytest.approx(400 / 7)
    assert present["hIoU"] == pytest.approx(2 * 60 * (400 / 7) / (60 + 400 / 7))
    for key in ("pAcc", "mAcc", "fwIoU", "IoU-a", "IoU-b"):  # only the GT-absent classes change
        assert present[key] == pytest.approx(mmseg[key]), key
    with pytest.raises(ValueError, match="miou_rule 'macro'"):
        zero_shot_metrics(conf, [0, 2], [1, 3], names, miou_rule="macro")


def test_evaluator_present_rule_is_named_in_log_and_json(dataset, tmp_path, caplog):
    inputs, outputs = _predictions(dataset)
    results = {}
    for rule in ("mmseg", "present"):
        evaluator = ZeroShotSemSegEvaluator(dataset, distributed=False, output_dir=str(tmp_path / rule),
                                            miou_rule=rule)
        evaluator.process(inputs, outputs)
        with caplog.at_level("INFO"):
            results[rule] = evaluator.evaluate()["sem_seg"]
        saved = json.loads((tmp_path / rule / "sem_seg_metrics.json").read_text())
        assert saved["miou_rule"] == rule and f"mIoU rule '{rule}'" in caplog.text
    ref = _reference_metrics(dataset, outputs)
    # "sky" (3) is predicted but never in the ground truth: present leaves it out of mIoU and mIoU(S).
    assert results["present"]["mIoU"] == pytest.approx(
        np.mean([ref[f"IoU-{CLASSES[c]}"] for c in GT_CLASSES]))
    assert results["present"]["mIoU(S)"] == pytest.approx(np.mean([ref["IoU-road"], ref["IoU-tree"]]))
    assert results["mmseg"]["mIoU"] == pytest.approx(ref["mIoU"]) != results["present"]["mIoU"]
    with pytest.raises(ValueError, match="TEST.MIOU_RULE"):
        ZeroShotSemSegEvaluator(dataset, miou_rule="Present")


def test_16bit_labels_with_ignore_65535(tmp_path):
    """A 300-class set with 16-bit PNG labels (values above 255) and ignore label 65535."""
    rng, num_classes, present = np.random.default_rng(3), 300, [0, 256, 299]
    records, gts = [], []
    for i, (h, w) in enumerate(SIZES):
        gt = rng.choice(present + [65535], size=(h, w)).astype(np.uint16)
        Image.fromarray(gt).save(tmp_path / f"gt16_{i}.png")
        records.append({"file_name": f"img16_{i}.jpg", "sem_seg_file_name": str(tmp_path / f"gt16_{i}.png")})
        gts.append(np.array(Image.open(tmp_path / f"gt16_{i}.png")).astype(np.int64))
    name = f"ldvc_test_evaluator16_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=[f"c{k}" for k in range(num_classes)], seen_classes=[],
                                  unseen_classes=list(range(num_classes)), ignore_label=65535)
    try:
        evaluator = ZeroShotSemSegEvaluator(name, distributed=False, miou_rule="present")
        preds = []
        for record, gt in zip(records, gts):
            pred = rng.choice(present + [1, 298], size=gt.shape)  # 1 and 298: never in the gt
            preds.append(pred)
            scores = torch.zeros(num_classes, *gt.shape)
            scores.scatter_(0, torch.as_tensor(pred)[None], 1.0)
            evaluator.process([{"file_name": record["file_name"]}], [{"sem_seg": scores}])
        res = evaluator.evaluate()["sem_seg"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    valid = [g != 65535 for g in gts]
    assert evaluator.conf_matrix[-1].sum() == sum((~v).sum() for v in valid)
    ious = []
    for c in present:  # independent per-pixel IoU of the classes present in the ground truth
        tp = sum(((g == c) & (p == c) & v).sum() for g, p, v in zip(gts, preds, valid))
        union = sum((((g == c) | (p == c)) & v).sum() for g, p, v in zip(gts, preds, valid))
        ious.append(100 * tp / union)
        assert res[f"IoU-c{c}"] == pytest.approx(ious[-1])
    assert res["mIoU"] == pytest.approx(np.mean(ious)) and math.isnan(res["IoU-c298"])
    n_valid = sum(v.sum() for v in valid)
    assert res["pAcc"] == pytest.approx(100 * sum(((g == p) & v).sum() for g, p, v in zip(gts, preds, valid)) / n_valid)
