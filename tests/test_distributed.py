"""Several processes on CPUs (gloo), as `train_net.py --num-gpus 2` runs them on a machine without CUDA.

* 2 processes leave identical weights on both ranks and make the same update as 1 process over the same
  total batch, with and without gradient accumulation (LDVC, and ZegCLIP whose head has parameters
  without gradient). The runs sum the same per-image gradients in another order (float32), so the
  comparison uses SGD, whose update is linear in the gradient: weights agree to 1e-4 of what two steps
  move them. (AdamW divides by the gradient's own size, so float noise in gradients that are exactly 0,
  e.g. attention key biases, becomes steps of +-lr: not a test of the gradients.) With dropout on,
  1 process × 2 accumulation steps and 2 processes × 1 step draw the same masks for the same
  micro-batch (seeded by its index in the iteration), so they make the same update.
* Every trainable parameter's gradient has the parameter's own strides (DDP's bucket-view contract).

The 1-process reference runs train in this process (one process is what ``launch`` runs in place);
train_net.py's own several-process runs (evaluation, two "machines") are in test_distributed_cli.py.
"""
import os

import pytest
import torch

import ldvc_d2  # noqa: F401  (first, also in spawned processes: the detectron2 v0.6 shims)
from detectron2.modeling import build_model
from detectron2.utils import comm

from ldvc_d2.checkpoint import load_checkpoint_file
from ldvc_d2.engine.launch import launch
from tests import tiny_shapes
from tests.conftest import tiny_cfg

COMMON = ["DATASETS.TRAIN", f"('{tiny_shapes.TRAIN}',)", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0",
          "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "1000",
          "SOLVER.IMS_PER_BATCH", "4", "SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "0.001", "MODEL.LDVC.LCTD.DROPOUT", "0.0", "MODEL.LDVC.LCTD.ATTN_DROPOUT", "0.0",
          "MODEL.ZEGCLIP.DROPOUT", "0.0", "MODEL.ZEGCLIP.ATTN_DROPOUT", "0.0", "MODEL.CLIP.VISUAL_PROMPT_DROPOUT", "0.0"]
DROPOUT = ["MODEL.LDVC.LCTD.DROPOUT", "0.1", "MODEL.LDVC.LCTD.ATTN_DROPOUT", "0.1", "MODEL.CLIP.VISUAL_PROMPT_DROPOUT", "0.1",
           "SOLVER.IMS_PER_BATCH", "2"]
LDVC, ZEGCLIP = "configs/demo.yaml", "configs/shapes/zegclip.yaml"
RTOL = 1e-4  # of the largest weight change the steps make
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path of several processes")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_shapes")
    return str(root), tiny_shapes.make(str(root))


def _train_runs(out: str, data: str, runs) -> None:
    """In every process: train each (tag, config, opts) from the same initial weights and save the
    weights as ``<tag>_rank<r>.pth`` (and ``<tag>_init.pth``)."""
    import train_net

    tiny_shapes.register(data)
    for tag, config, opts in runs:
        cfg = tiny_cfg(config, *COMMON, *opts, "OUTPUT_DIR", os.path.join(out, tag))
        torch.manual_seed(0)
        trainer = train_net.Trainer(cfg)
        model = getattr(trainer.model, "module", trainer.model)
        if comm.is_main_process():
            torch.save(model.state_dict(), os.path.join(out, f"{tag}_init.pth"))
        trainer.resume_or_load(resume=False)
        trainer.train()
        torch.save(model.state_dict(), os.path.join(out, f"{tag}_rank{comm.get_rank()}.pth"))


def _load(out, name):
    return load_checkpoint_file(os.path.join(out, name + ".pth"))


def _max_diff(a, b) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_processes_make_the_one_process_update(tiny_data, tmp_path):
    _, data = tiny_data
    out = str(tmp_path)
    one = [("ldvc_full", LDVC, []), ("zegclip_full", ZEGCLIP, []),
           ("ldvc_dropout_accum", LDVC, [*DROPOUT, "SOLVER.MAX_IMS_PER_GPU", "1"])]
    two = [("ldvc_ddp_accum", LDVC, ["SOLVER.MAX_IMS_PER_GPU", "1"]), ("zegclip_ddp", ZEGCLIP, []),
           ("ldvc_dropout_ddp", LDVC, DROPOUT)]
    _train_runs(out, data, one)  # in this process: world size 1
    launch(_train_runs, 2, dist_url="auto", args=(out, data, two))

    for reference, other in (("ldvc_full", "ldvc_ddp_accum"), ("zegclip_full", "zegclip_ddp"),
                             ("ldvc_dropout_accum", "ldvc_dropout_ddp")):
        r0, r1 = _load(out, other + "_rank0"), _load(out, other + "_rank1")
        assert all(torch.equal(r0[k], r1[k]) for k in r0), other  # DDP keeps the ranks in step, exactly
        ref = _load(out, reference + "_rank0")
        moved = _max_diff(ref, _load(out, reference + "_init"))
        diff = _max_diff(ref, r0)
        assert moved > 0 and diff < RTOL * moved, f"{other} differs from {reference} by {diff} (steps moved {moved})"


def test_gradients_keep_the_parameter_layout(tiny_data):
    """DDP copies each gradient into a bucket view with the parameter's strides and warns ("grad strides
    do not match bucket view strides") when they differ, as a 1x1 conv over channels-last tokens did."""
    _, data = tiny_data
    tiny_shapes.register(data)
    from ldvc_d2.data import LDVCTrainMapper
    from detectron2.data import DatasetCatalog

    cfg = tiny_cfg(LDVC, *COMMON)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    mapper = LDVCTrainMapper(cfg, True)
    batch = [mapper(d) for d in DatasetCatalog.get(tiny_shapes.TRAIN)[:2]]
    sum(model(batch).values()).backward()
    grads = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    assert any("skip" in n for n, _ in grads)
    bad = [n for n, p in grads if p.grad.stride() != p.stride()]
    assert not bad, bad
