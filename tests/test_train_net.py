"""End to end through train_net.py, as a user runs it: train and save (a train_net.py process, which also
generates the shapes dataset), then resume and --eval-only (train_net's parser and main in this process:
tests/scripts.py run_train_net)."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO
from tests.scripts import run_train_net

FAST = ["MODEL.CLIP.PRETRAINED", "", "DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "2",
        "SOLVER.IMS_PER_BATCH", "2"]


def _run(tmp_path, *args):
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
                           os.path.join(REPO, "configs/demo.yaml"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_train_resume_and_eval_only(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    log = _run(tmp_path, *FAST, "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()", "OUTPUT_DIR", out)
    assert "Trainable parameters:" in log and "Starting training from iteration 0" in log
    assert os.path.isfile(os.path.join(out, "model_0000001.pth"))
    assert os.path.isfile(os.path.join(out, "model_final.pth"))

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))  # the shapes set the first run generated
    config = os.path.join(REPO, "configs/demo.yaml")
    _, log = run_train_net("--config-file", config, "--resume", *FAST, "SOLVER.MAX_ITER", "5", "DATASETS.TEST", "()",
                           "OUTPUT_DIR", out)
    assert "Starting training from iteration 3" in log, log[-2000:]

    _, log = run_train_net("--config-file", config, "--eval-only", "MODEL.WEIGHTS",
                           os.path.join(out, "model_final.pth"), *FAST[:2], "OUTPUT_DIR", out)
    assert "copypaste: pAcc,mAcc,fwIoU,mIoU,mIoU(S),mIoU(U),hIoU" in log
    with open(os.path.join(out, "inference", "shapes_zs_val", "sem_seg_metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["dataset"] == "shapes_zs_val" and metrics["num_images"] == 100
    assert set(metrics["metrics"]) >= {"pAcc", "mIoU", "mIoU(S)", "mIoU(U)", "hIoU"}
    assert len(metrics["per_class_iou"]) == len(metrics["class_names"]) == 16
