"""C2S end to end through train_net.py (train -> --eval-only on generated shapes data, the eval-only run
unable to build CLIP's image tower), and the [CLS] bank gathered over two gloo processes."""
import json
import os
import subprocess
import sys

import pytest
import torch

import ldvc_d2  # noqa: F401  (first, also in spawned processes: the detectron2 v0.6 shims)
from detectron2.utils import comm
from open_clip import transformer

from ldvc_d2.engine.launch import launch
from ldvc_d2.modeling.clip import vision
from tests import tiny_shapes
from tests.conftest import REPO
from tests.scripts import run_train_net

CONFIG = os.path.join(REPO, "configs/c2s/shapes.yaml")
FAST = ["MODEL.CLIP.PRETRAINED", "", "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000", "INPUT.CROP.SIZE", "(64, 64)",
        "MODEL.C2S.MERGE_THRESHOLD", "0.5", "MODEL.C2S.MIN_CLUSTER", "2"]
def _train_net(tmp_path, *args):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CONFIG, *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_train_then_eval_only_without_the_image_tower(tmp_path, monkeypatch):
    """Training is a train_net.py process; --eval-only runs train_net's parser and main in this process
    (tests/scripts.py run_train_net) with CLIP's image tower classes refusing to be constructed."""
    data = tiny_shapes.make(str(tmp_path / "data"))
    register = str(tmp_path / "data" / "register_tiny_shapes.py")
    out = str(tmp_path / "out")
    sets = ["DATASETS.TRAIN", f"('{tiny_shapes.TRAIN}',)", "DATASETS.TEST", f"('{tiny_shapes.VAL}',)"]
    log = _train_net(tmp_path, "--register", register, *FAST, *sets, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
                     "OUTPUT_DIR", out)
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


def _gather_worker(out: str) -> None:
    from ldvc_d2.modeling.c2s import CLSBank, gather_tokens

    rank = comm.get_rank()
    bank = CLSBank(5, 3)
    results = []
    for step in range(2):
        tokens = torch.full((2, 3), float(10 * step + rank)) + torch.arange(2.0)[:, None] / 10
        gathered, offset = gather_tokens(tokens)
        results.append((gathered, offset, bank.push(gathered)))
    torch.save({"results": results, "bank": bank.tokens.clone()}, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path of several processes")
def test_bank_is_gathered_rank_major_and_identical_on_both_processes(tmp_path):
    launch(_gather_worker, 2, dist_url="auto", args=(str(tmp_path),))
    r0, r1 = (torch.load(os.path.join(tmp_path, f"rank{r}.pt")) for r in (0, 1))
    for step, ((g0, o0, c0), (g1, o1, c1)) in enumerate(zip(r0["results"], r1["results"])):
        expected = torch.tensor([10 * step + r + i / 10 for r in (0, 1) for i in (0, 1)])[:, None].expand(4, 3)
        torch.testing.assert_close(g0, expected)
        assert torch.equal(g0, g1) and (o0, o1) == (0, 2) and torch.equal(c0, c1)
    assert r0["results"][1][2].shape == (5, 3)  # 4 current + the newest previous token
    assert torch.equal(r0["bank"], r1["bank"])
