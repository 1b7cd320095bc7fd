"""train_net.Trainer built and run in-process on a tiny registered dataset (photometric distortion on),
its DDP settings per head, ``build_evaluator``'s errors, and the class-list mismatch of DATASETS.TRAIN.

The evaluation runs on a dataset whose ignore label is 254 (not detectron2's usual 255); its pixel
accuracy is recomputed here from the model's own predictions on the same test inputs.
"""
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators
from detectron2.modeling import build_model
from PIL import Image

from ldvc_d2.evaluation import ZeroShotSemSegEvaluator
from tests.conftest import TOY_CLASSES, tiny_cfg
from tests.scripts import load_script

TRAIN, VAL = "ldvc_test_trainer_train", "ldvc_test_trainer_val"


def _write_split(root, name, n, ignore, seed):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        h, w = 40 + 8 * i, 48
        image, label = rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 5, (h, w)).astype(np.uint8)
        label[rng.random((h, w)) < 0.2] = ignore
        files = {"file_name": str(root / f"{name}_{i}.png"), "sem_seg_file_name": str(root / f"{name}_{i}_gt.png")}
        Image.fromarray(image).save(files["file_name"])
        Image.fromarray(label).save(files["sem_seg_file_name"])
        records.append({**files, "height": h, "width": w})
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=TOY_CLASSES, seen_classes=[0, 1, 3], unseen_classes=[2, 4],
                                  ignore_label=ignore, evaluator_type="zero_shot_sem_seg")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer_data")
    _write_split(root, TRAIN, 2, 255, 0)
    _write_split(root, VAL, 2, 254, 1)
    yield
    for name in (TRAIN, VAL):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture(scope="module")
def train_net():
    return load_script("train_net.py")


def _cfg(tmp_path, config="configs/demo.yaml", *opts):
    return tiny_cfg(config, "DATASETS.TRAIN", f"('{TRAIN}',)", "DATASETS.TEST", f"('{VAL}',)", "SOLVER.MAX_ITER", "2",
                    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
                    "INPUT.TRAIN_SCALE", "(64, 32)", "INPUT.CROP.SIZE", "(32, 32)", "INPUT.MIN_SIZE_TEST", "32",
                    "INPUT.MAX_SIZE_TEST", "128", "MODEL.SEGMENTOR.INFERENCE.CROP_SIZE", "32", "MODEL.SEGMENTOR.INFERENCE.STRIDE",
                    "24", "INPUT.PHOTOMETRIC_DISTORTION", "True", "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD",
                    "1000", "OUTPUT_DIR", str(tmp_path / "out"), *opts)


def _record_ddp(monkeypatch, train_net):
    calls = []
    monkeypatch.setattr(train_net, "create_ddp_model", lambda model, **kw: calls.append(kw) or model)
    return calls


def test_trainer_trains_in_process_and_evaluates_with_ignore_254(datasets, train_net, tmp_path, monkeypatch):
    calls = _record_ddp(monkeypatch, train_net)
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    trainer = train_net.Trainer(cfg)
    # LCTD: every trainable weight gets a gradient, DDP need not search for unused ones
    assert calls == [{"broadcast_buffers": False, "find_unused_parameters": False}]
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    mapper_augs = [type(a).__name__ for a in trainer.data_loader.mapper.augmentations.augs]
    assert mapper_augs[-1] == "PhotometricDistortion"
    model = trainer.model
    before = model.backbone.visual.prompts.detach().clone()
    trainer.train()
    assert trainer.iter == cfg.SOLVER.MAX_ITER == 2
    assert int(trainer.optimizer.state[model.backbone.visual.prompts]["step"]) == 2  # two optimizer steps
    assert not torch.equal(before, model.backbone.visual.prompts)
    assert (tmp_path / "out" / "model_final.pth").is_file()

    evaluator = train_net.Trainer.build_evaluator(cfg, VAL)
    results = train_net.Trainer.test(cfg, model, [evaluator])
    correct = valid = 0
    model.eval()
    with torch.no_grad():
        for batch in train_net.Trainer.build_test_loader(cfg, VAL):
            pred = model(batch)[0]["sem_seg"].argmax(0).numpy()
            gt = np.array(Image.open(batch[0]["sem_seg_file_name"])).astype(np.int64)
            assert pred.shape == gt.shape and (gt == 254).any()
            correct += ((pred == gt) & (gt != 254)).sum()
            valid += (gt != 254).sum()
    assert results["sem_seg"]["pAcc"] == pytest.approx(100.0 * correct / valid, rel=1e-6)


def test_zegclip_trainer_tells_ddp_about_unused_parameters(datasets, train_net, tmp_path, monkeypatch):
    calls = _record_ddp(monkeypatch, train_net)
    train_net.Trainer(_cfg(tmp_path, "configs/shapes/zegclip.yaml"))
    assert calls == [{"broadcast_buffers": False, "find_unused_parameters": True}]


def test_build_evaluator_checks_the_evaluator_type(datasets, train_net, tmp_path):
    cfg = _cfg(tmp_path)
    evaluators = train_net.Trainer.build_evaluator(cfg, VAL)
    assert isinstance(evaluators, DatasetEvaluators)
    (evaluator,) = evaluators._evaluators
    assert isinstance(evaluator, ZeroShotSemSegEvaluator)
    assert evaluator._output_dir == str(tmp_path / "out" / "inference" / VAL)
    assert evaluator._protocol.startswith("LDVC: sliding window 32x32 stride 24, short side 32")
    for evaluator_type in ("sem_seg", None):
        name = f"ldvc_test_trainer_{evaluator_type}"
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(stuff_classes=TOY_CLASSES, evaluator_type=evaluator_type)
        try:
            with pytest.raises(ValueError, match=f"Dataset '{name}' has evaluator_type={evaluator_type!r}; "
                                                 "ldvc_d2 evaluates .*zero_shot_sem_seg"):
                train_net.Trainer.build_evaluator(cfg, name)
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_training_sets_with_different_class_lists_are_an_error(datasets):
    for seen, same in (([0, 1], False), ([0, 1, 3], True)):
        other = f"ldvc_test_trainer_seen_{len(seen)}"
        DatasetCatalog.register(other, lambda: [])
        MetadataCatalog.get(other).set(stuff_classes=TOY_CLASSES, seen_classes=seen)
        try:
            cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", f"('{TRAIN}', '{other}')")
            if same:
                assert build_model(cfg).train_class_names == [TOY_CLASSES[i] for i in (0, 1, 3)]
            else:
                message = rf"DATASETS.TRAIN \['{TRAIN}', '{other}'\] have different class lists"
                with pytest.raises(ValueError, match=message):
                    build_model(cfg)
        finally:
            DatasetCatalog.remove(other)
            MetadataCatalog.remove(other)
