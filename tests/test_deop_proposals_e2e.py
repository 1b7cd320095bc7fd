"""DeOP stages 1 and 2 end to end through train_net's parser and main (in the test process:
tests/scripts.py run_train_net), as a user runs them: train, then --eval-only, on a tiny generated copy of
the shapes benchmark (tests/tiny_shapes.py); and their checkpoints hold what stage 3 reads
(``proposal_net.*`` for the proposal network, one ``*ctx`` tensor for the prompts)."""
import json
import os

import pytest
import torch

from ldvc_d2.checkpoint import load_checkpoint_file
from tests import tiny_shapes
from tests.conftest import REPO, tiny_cfg
from tests.scripts import run_train_net

FAST = ["MODEL.CLIP.PRETRAINED", "", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "1000",
        "DATASETS.TRAIN", f"('{tiny_shapes.TRAIN}',)"]
TINY_NET = ["MODEL.DEOP.PROPOSAL_NET.BACKBONE", "resnet10t", "MODEL.DEOP.PROPOSAL_NET.NUM_QUERIES", "4",
            "MODEL.DEOP.PROPOSAL_NET.HIDDEN_DIM", "32", "MODEL.DEOP.PROPOSAL_NET.PIXEL_DECODER_DIM", "32",
            "MODEL.DEOP.PROPOSAL_NET.MASK_DIM", "32", "MODEL.DEOP.PROPOSAL_NET.DIM_FEEDFORWARD", "64"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_shapes")
    return str(root), tiny_shapes.make(str(root))


def _train_then_evaluate(tmp_path, root, config, *opts):
    out = str(tmp_path / "out")
    flags = ["--config-file", os.path.join(REPO, config), "--register", os.path.join(root, "register_tiny_shapes.py")]
    _, log = run_train_net(*flags, *FAST, *opts, "DATASETS.TEST", "()", "OUTPUT_DIR", out)
    assert "Starting training from iteration 0" in log
    weights = os.path.join(out, "model_final.pth")
    _, log = run_train_net(*flags, "--eval-only", *FAST, *opts, "MODEL.WEIGHTS", weights,
                           "DATASETS.TEST", f"('{tiny_shapes.VAL}',)", "OUTPUT_DIR", out)
    assert "copypaste: pAcc,mAcc,fwIoU,mIoU,mIoU(S),mIoU(U),hIoU" in log
    with open(os.path.join(out, "inference", tiny_shapes.VAL, "sem_seg_metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["num_images"] == 6 and len(metrics["per_class_iou"]) == 16
    return load_checkpoint_file(weights)["model"], metrics


def test_stage2_proposals_train_and_evaluate(tiny_data, tmp_path):
    pytest.importorskip("transformers")
    from ldvc_d2.modeling.deop.proposals import build_proposal_network

    root, data = tiny_data
    state, metrics = _train_then_evaluate(tmp_path, root, "configs/deop/proposals_shapes.yaml", *TINY_NET)
    assert "MaskFormer semantic inference" in metrics["protocol"]
    unseen = [metrics["per_class_iou"][metrics["class_names"][i]] for i in tiny_shapes.UNSEEN_CLASSES]
    assert all(v == 0 for v in unseen)  # no unseen class is ever predicted
    # Stage 3 rebuilds the network from the same config and loads the "proposal_net." tensors, strictly.
    tiny_shapes.register(data)
    net = build_proposal_network(tiny_cfg("configs/deop/proposals_shapes.yaml", *FAST, *TINY_NET))
    weights = {k[len("proposal_net."):]: v for k, v in state.items() if k.startswith("proposal_net.")}
    assert net.load_state_dict(weights, strict=True) is not None
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 16, 16)


def test_stage1_prompts_train_and_evaluate(tiny_data, tmp_path):
    root, _ = tiny_data
    state, metrics = _train_then_evaluate(tmp_path, root, "configs/deop/stage1_shapes.yaml")
    assert "CoOp prompts" in metrics["protocol"]
    assert [k for k in state if k.split(".")[-1] == "ctx"] == ["text_encoder.ctx"]
