"""VOC and COCO-Stuff end to end, as a user runs them: fake download -> ``datasets/prepare_*.py`` ->
``train_net.py`` (train) -> ``train_net.py --eval-only``, with the benchmark configs and the tiny
random CLIP on the CPU. Training, evaluation and the missing-dataset error run train_net's parser and main
in the test process (tests/scripts.py run_train_net), with the sets registered under the test's root as a
train_net.py process started with that $DETECTRON2_DATASETS registers them. Expectations (class counts,
splits, labels) come from the dataset specifications in ``datasets/README.md``, not from the package's
tables."""
import contextlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ldvc_d2.data.datasets.register_coco_stuff import COCO_STUFF_SPLITS
from ldvc_d2.data.datasets.register_voc import VOC_SPLITS
from ldvc_d2.data.datasets.zero_shot_sem_seg import register_zero_shot_splits
from ldvc_d2.evaluation import load_confusion_matrix
from tests.conftest import REPO
from tests.scripts import run_train_net
from tests.fake_datasets import (coco_contiguous, coco_used_ids, make_coco_stuff_tree,
                                 make_voc_tree, voc_expected)

SIZE = (96, 128)  # (h, w) of every fake image
# CPU, tiny random CLIP (patch 8), 2 iterations, 64 px crops and test short side.
FAST = ["MODEL.DEVICE", "cpu", "MODEL.CLIP.MODEL", "LDVC-Tiny", "MODEL.CLIP.PRETRAINED", "",
        "MODEL.CLIP.VISUAL_PROMPTS", "4", "MODEL.LDVC.LCTD.NUM_HEADS", "4", "MODEL.LDVC.LCTD.TOPK_WINDOWS", "4",
        "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_WORLD_SIZE", "0",
        "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0", "INPUT.CROP.SIZE", "(64, 64)",
        "INPUT.TRAIN_SCALE", "(256, 64)", "INPUT.MIN_SIZE_TEST", "64",
        "MODEL.SEGMENTOR.INFERENCE.CROP_SIZE", "64", "MODEL.SEGMENTOR.INFERENCE.STRIDE", "48"]
PROTOCOL = ("LDVC: sliding window 64x64 stride 48, short side 64, seen-score calibration 0.1, "
            "trained on seen classes of ['{train}']")
COPYPASTE_KEYS = ("pAcc", "mAcc", "fwIoU", "mIoU", "mIoU(S)", "mIoU(U)", "hIoU")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark as the README states it, and how to fake its download."""

    name: str
    config: str
    prepare: str  # script under datasets/
    train_set: str
    val_set: str
    num_classes: int
    unseen_names: Tuple[str, ...]
    make_tree: Callable[[str], Dict[str, np.ndarray]]  # root -> {"<split>/<stem>": prepared label}
    train_split: str  # the prepared label folders, relative to the root
    val_split: str


def _voc_tree(root: str) -> Dict[str, np.ndarray]:
    """6 train_aug ids (3 VOC, 3 SBD) + 3 val ids (one also in SBD: VOC val must exclude it)."""
    voc_train = ["2007_000001", "2007_000002", "2007_000005"]
    voc_val = ["2007_000003", "2007_000004", "2007_000006"]
    raw = make_voc_tree(root, seed=5, voc_train=voc_train, voc_val=voc_val,
                        sbd_train=["2008_000010", "2008_000012"],
                        sbd_val=["2008_000011", "2007_000003"], extra=[], size=SIZE, all_ids=True)
    return {("val/" if i in voc_val else "train_aug/") + i: voc_expected(r) for i, r in raw.items()}


def _coco_tree(root: str) -> Dict[str, np.ndarray]:
    """6 train2017 + 3 val2017 maps, each holding every used id (across the gaps) and 255."""
    splits = {"train2017": [f"{i:012d}" for i in range(1, 7)],
              "val2017": [f"{i:012d}" for i in range(7, 10)]}
    raw = make_coco_stuff_tree(root, splits, seed=6, size=SIZE, stamp=[*coco_used_ids(), 255])
    return {f"{split}/{name}": coco_contiguous(raw[name])
            for split, names in splits.items() for name in names}


VOC = Benchmark("voc", "configs/voc.yaml", "prepare_voc.py", "voc_zs_train_seen", "voc_zs_val", 20,
                ("pottedplant", "sheep", "sofa", "train", "tvmonitor"), _voc_tree,
                "VOCdevkit/VOC2012/annotations_ldvc/train_aug", "VOCdevkit/VOC2012/annotations_ldvc/val")
COCO_STUFF = Benchmark(
    "coco_stuff", "configs/coco_stuff.yaml", "prepare_coco_stuff.py", "coco_stuff_zs_train_seen",
    "coco_stuff_zs_val", 171,
    ("cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
     "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete"), _coco_tree,
    "coco/stuffthingmaps_ldvc/train2017", "coco/stuffthingmaps_ldvc/val2017")


def _run(args: Sequence[str], cwd: str, root: str) -> subprocess.CompletedProcess:
    """Run a Python script with DETECTRON2_DATASETS=root; stdout and stderr captured."""
    env = {**os.environ, "DETECTRON2_DATASETS": root}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@contextlib.contextmanager
def _sets_under(root: str, *names: str):
    """The built-in sets ``names`` registered under ``root`` (as ldvc_d2 registers them on import in a
    process whose $DETECTRON2_DATASETS is ``root``); the registrations of this process are restored after."""
    splits = {split.name: split for split in (*VOC_SPLITS, *COCO_STUFF_SPLITS)}
    saved = {name: (DatasetCatalog[name], MetadataCatalog.get(name)) for name in names}
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_zero_shot_splits([splits[name] for name in names], root)
    try:
        yield
    finally:
        for name, (load, metadata) in saved.items():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
            DatasetCatalog.register(name, load)
            MetadataCatalog[name] = metadata


def _ok(proc: subprocess.CompletedProcess) -> str:
    """The process's output, after asserting that it succeeded."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module", params=[VOC, COCO_STUFF], ids=lambda b: b.name)
def prepared(request, tmp_path_factory) -> Tuple[Benchmark, str, Dict[str, np.ndarray]]:
    """A fake tree of the benchmark, prepared by its script: (benchmark, root, expected labels)."""
    bench: Benchmark = request.param
    root = str(tmp_path_factory.mktemp(bench.name) / "data")
    expected = bench.make_tree(root)
    log = _ok(_run([os.path.join(REPO, "datasets", bench.prepare), "--root", root, "--workers", "1"],
                   root, root))
    assert re.search(r": 6 written, 0 already done -> .*" + re.escape(bench.train_split), log), log
    assert re.search(r": 3 written, 0 already done -> .*" + re.escape(bench.val_split), log), log
    return bench, root, expected


def _prepared_labels(root: str, bench: Benchmark) -> Dict[str, np.ndarray]:
    """Split folder name/stem -> the label array, for every PNG the preparation wrote."""
    labels = {}
    for folder in (bench.train_split, bench.val_split):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            labels[f"{os.path.basename(folder)}/{name[:-4]}"] = np.array(
                Image.open(os.path.join(root, folder, name)))
    return labels


def test_prepared_labels_cover_every_class(prepared):
    """The fake trees exercise every class (seen and unseen) and 255, in both splits."""
    bench, root, expected = prepared
    got = _prepared_labels(root, bench)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    every = set(range(bench.num_classes)) | {255}
    for split in (bench.train_split, bench.val_split):
        folder = os.path.basename(split)
        assert set(np.unique(np.concatenate(
            [v.ravel() for k, v in got.items() if k.startswith(folder + "/")]))) == every


def _copypaste_numbers(log: str) -> List[float]:
    """The numbers of detectron2's copypaste line that follows the pAcc,... header."""
    lines = log.splitlines()
    header = next(i for i, line in enumerate(lines)
                  if line.endswith("copypaste: " + ",".join(COPYPASTE_KEYS)))
    return [float(x) for x in lines[header + 1].split("copypaste: ")[1].split(",")]


def test_train_then_eval_only(prepared, tmp_path):
    """Train 2 iterations on the seen classes, then evaluate the checkpoint on the val set."""
    bench, root, expected = prepared
    out = str(tmp_path / "out")
    config = os.path.join(REPO, bench.config)
    with _sets_under(root, bench.train_set):
        _, log = run_train_net("--config-file", config, *FAST, "DATASETS.TEST", "()", "OUTPUT_DIR", out)
    assert "Starting training from iteration 0" in log
    assert f"dataset '{bench.train_set}': 6 images" in log  # the small-split warning
    assert os.path.isfile(os.path.join(out, "model_final.pth"))

    with _sets_under(root, bench.val_set):
        _, log = run_train_net("--config-file", config, "--eval-only", "MODEL.WEIGHTS",
                               os.path.join(out, "model_final.pth"), *FAST,
                               "DATASETS.TEST", f"('{bench.val_set}',)", "OUTPUT_DIR", out)
    protocol = PROTOCOL.format(train=bench.train_set)
    n, n_unseen = bench.num_classes, len(bench.unseen_names)
    assert (f"Zero-shot evaluation of '{bench.val_set}': 3 images, {n} classes ({n - n_unseen} "
            f"seen, {n_unseen} unseen, evaluated jointly), ignore label 255, mIoU rule 'mmseg' (a predicted class "
            f"absent from the ground truth counts as IoU 0), protocol: {protocol}"
            ) in log, log[-3000:]

    with open(os.path.join(out, "inference", bench.val_set, "sem_seg_metrics.json")) as f:
        report = json.load(f)
    assert report["dataset"] == bench.val_set and report["num_images"] == 3
    assert report["protocol"] == protocol
    names, seen, unseen = report["class_names"], report["seen_classes"], report["unseen_classes"]
    assert len(names) == len(set(names)) == n and len(report["per_class_iou"]) == n
    assert (len(seen), len(unseen)) == (n - n_unseen, n_unseen)
    assert sorted(seen + unseen) == list(range(n))
    assert {names[i] for i in unseen} == set(bench.unseen_names)

    # Every ground-truth pixel of the 3 val images, at full resolution, counted once in its row.
    conf = load_confusion_matrix(os.path.join(out, "inference", bench.val_set), bench.num_classes)
    gt = np.concatenate([v.ravel() for k, v in expected.items()
                         if k.startswith(os.path.basename(bench.val_split) + "/")])
    assert gt.size == 3 * SIZE[0] * SIZE[1]
    np.testing.assert_array_equal(conf.sum(1), np.bincount(np.where(gt == 255, n, gt),
                                                           minlength=n + 1))
    assert conf.shape == (n + 1, n + 1) and not conf[:, n].any()
    metrics = report["metrics"]
    assert metrics["pAcc"] == pytest.approx(100 * np.trace(conf[:n, :n]) / conf[:n].sum())

    # The copypaste line a user pastes carries the same numbers as the saved report.
    assert _copypaste_numbers(log) == pytest.approx([metrics[k] for k in COPYPASTE_KEYS], abs=1e-4)


def test_missing_dataset_names_folder_and_prepare_command(tmp_path):
    """Training before downloading / preparing: the error names the folder and the command."""
    bench, empty = VOC, tmp_path / "datasets"
    empty.mkdir()
    with _sets_under(str(empty), bench.train_set), pytest.raises(Exception) as error:
        run_train_net("--config-file", os.path.join(REPO, bench.config), *FAST, "DATASETS.TEST", "()",
                      "OUTPUT_DIR", str(tmp_path / "out"))
    assert f"'{os.path.join(str(empty), bench.train_split)}' does not exist" in str(error.value), str(error.value)
    assert "python datasets/prepare_voc.py" in str(error.value)
    assert not os.path.exists(tmp_path / "out" / "model_final.pth")
