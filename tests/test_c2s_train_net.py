"""C2S end to end through train_net's parser and main (train -> --eval-only on generated shapes data, the
eval-only run unable to build CLIP's image tower; in the test process: tests/scripts.py run_train_net).
The [CLS] bank gathered over two gloo processes is checked in tests/test_distributed.py (in its launch of
2 processes)."""
import json
import os

import ldvc_d2  # noqa: F401  (first: the detectron2 v0.6 shims)
from open_clip import transformer

from ldvc_d2.modeling.clip import vision
from tests import tiny_shapes
from tests.conftest import REPO
from tests.scripts import run_train_net

CONFIG = os.path.join(REPO, "configs/c2s/shapes.yaml")
FAST = ["MODEL.CLIP.PRETRAINED", "", "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000", "INPUT.CROP.SIZE", "(64, 64)",
        "MODEL.C2S.MERGE_THRESHOLD", "0.5", "MODEL.C2S.MIN_CLUSTER", "2"]


def test_train_then_eval_only_without_the_image_tower(tmp_path, monkeypatch):
    """Training, then --eval-only with CLIP's image tower classes refusing to be constructed."""
    data = tiny_shapes.make(str(tmp_path / "data"))
    register = str(tmp_path / "data" / "register_tiny_shapes.py")
    out = str(tmp_path / "out")
    sets = ["DATASETS.TRAIN", f"('{tiny_shapes.TRAIN}',)", "DATASETS.TEST", f"('{tiny_shapes.VAL}',)"]
    _, log = run_train_net("--config-file", CONFIG, "--register", register, *FAST, *sets, "SOLVER.MAX_ITER", "2",
                           "DATASETS.TEST", "()", "OUTPUT_DIR", out)
    assert "Starting training from iteration 0" in log and "loss_global" in log
    weights = os.path.join(out, "model_final.pth")

    def refuse(*args, **kwargs):
        raise RuntimeError("the eval-only run built CLIP's image tower")

    # open_clip's own tower: not even constructed and dropped
    monkeypatch.setattr(transformer.VisionTransformer, "__init__", refuse)
    monkeypatch.setattr(vision.PromptedVisionEncoder, "__init__", refuse)
    _, log = run_train_net("--config-file", CONFIG, "--eval-only", "--register", register, *FAST, *sets,
                           "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out)
    assert "copypaste: pAcc,mAcc,fwIoU,mIoU,mIoU(S),mIoU(U),hIoU" in log
    with open(os.path.join(out, "inference", tiny_shapes.VAL, "sem_seg_metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["num_images"] == 6 and "no CLIP image tower" in metrics["protocol"]
    assert os.path.isdir(data)
