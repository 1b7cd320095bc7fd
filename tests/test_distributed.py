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
* C2S's [CLS] bank gathered over the 2 processes: rank-major, identical on both (in the same launch).

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


ONE = [("ldvc_full", LDVC, []), ("zegclip_full", ZEGCLIP, []),
       ("ldvc_dropout_accum", LDVC, [*DROPOUT, "SOLVER.MAX_IMS_PER_GPU", "1"])]
TWO = [("ldvc_ddp_accum", LDVC, ["SOLVER.MAX_IMS_PER_GPU", "1"]), ("zegclip_ddp", ZEGCLIP, []),
       ("ldvc_dropout_ddp", LDVC, DROPOUT)]


def _gather_bank(out: str) -> None:
    """In every process: push two steps of rank-stamped [CLS] tokens through C2S's gather and bank."""
    from ldvc_d2.modeling.c2s import CLSBank, gather_tokens

    rank = comm.get_rank()
    bank = CLSBank(5, 3)
    results = []
    for step in range(2):
        tokens = torch.full((2, 3), float(10 * step + rank)) + torch.arange(2.0)[:, None] / 10
        gathered, offset = gather_tokens(tokens)
        results.append((gathered, offset, bank.push(gathered)))
    torch.save({"results": results, "bank": bank.tokens.clone()}, os.path.join(out, f"bank_rank{rank}.pt"))


def _two_process_work(out: str, data: str) -> None:
    _train_runs(out, data, TWO)
    _gather_bank(out)


@pytest.fixture(scope="module")
def two_processes(tiny_data, tmp_path_factory) -> str:
    """One launch of 2 gloo processes for the module (each start of a process costs seconds): the TWO
    training runs, then C2S's bank gather; returns the folder of their files."""
    out = str(tmp_path_factory.mktemp("two_processes"))
    launch(_two_process_work, 2, dist_url="auto", args=(out, tiny_data[1]))
    return out


def test_two_processes_make_the_one_process_update(tiny_data, two_processes, tmp_path):
    _, data = tiny_data
    one = str(tmp_path)
    _train_runs(one, data, ONE)  # in this process: world size 1

    for reference, other in (("ldvc_full", "ldvc_ddp_accum"), ("zegclip_full", "zegclip_ddp"),
                             ("ldvc_dropout_accum", "ldvc_dropout_ddp")):
        r0, r1 = _load(two_processes, other + "_rank0"), _load(two_processes, other + "_rank1")
        assert all(torch.equal(r0[k], r1[k]) for k in r0), other  # DDP keeps the ranks in step, exactly
        ref = _load(one, reference + "_rank0")
        moved = _max_diff(ref, _load(one, reference + "_init"))
        diff = _max_diff(ref, r0)
        assert moved > 0 and diff < RTOL * moved, f"{other} differs from {reference} by {diff} (steps moved {moved})"


def test_c2s_bank_is_gathered_rank_major_and_identical_on_both_processes(two_processes):
    """C2S's [CLS] bank over 2 processes: all_gather puts rank 0's tokens first, each process knows its
    offset, and both hold the same bank (the newest previous token kept after 4 current ones)."""
    r0, r1 = (torch.load(os.path.join(two_processes, f"bank_rank{r}.pt")) for r in (0, 1))
    for step, ((g0, o0, c0), (g1, o1, c1)) in enumerate(zip(r0["results"], r1["results"])):
        expected = torch.tensor([10 * step + r + i / 10 for r in (0, 1) for i in (0, 1)])[:, None].expand(4, 3)
        torch.testing.assert_close(g0, expected)
        assert torch.equal(g0, g1) and (o0, o1) == (0, 2) and torch.equal(c0, c1)
    assert r0["results"][1][2].shape == (5, 3)  # 4 current + the newest previous token
    assert torch.equal(r0["bank"], r1["bank"])


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
