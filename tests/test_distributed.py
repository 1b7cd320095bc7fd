"""Several processes on CPUs (gloo), as `train_net.py --num-gpus 2` runs them on a machine without CUDA.

* 2 processes leave identical weights on both ranks and make the same update as 1 process over the same
  total batch, with and without gradient accumulation (LDVC, and ZegCLIP whose head has parameters
  without gradient). The runs sum the same per-image gradients in another order (float32), so the
  comparison uses SGD, whose update is linear in the gradient: weights agree to 1e-4 of what two steps
  move them. (AdamW divides by the gradient's own size, so float noise in gradients that are exactly 0,
  e.g. attention key biases, becomes steps of +-lr: not a test of the gradients.) With dropout on,
  1 process × 2 accumulation steps and 2 processes × 1 step draw the same masks for the same
  micro-batch (seeded by its index in the iteration), so they make the same update.
* Evaluation with 2 processes writes the same sem_seg_metrics.json, byte for byte, as with 1.
* Two "machines" of one process each (--num-machines 2, --machine-rank, --dist-url on 127.0.0.1).
* Every trainable parameter's gradient has the parameter's own strides (DDP's bucket-view contract).
"""
import filecmp
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import ldvc_d2  # noqa: F401  (first, also in spawned processes: the detectron2 v0.6 shims)
from detectron2.modeling import build_model
from detectron2.utils import comm

from ldvc_d2.checkpoint import load_checkpoint_file
from ldvc_d2.engine.launch import launch
from tests import tiny_shapes
from tests.conftest import REPO, tiny_cfg

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


def _single(_local_rank: int, *args) -> None:
    _train_runs(*args)


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
    mp.start_processes(_single, nprocs=1, start_method="spawn", args=(out, data, one))
    launch(_train_runs, 2, dist_url="auto", args=(out, data, two))

    for reference, other in (("ldvc_full", "ldvc_ddp_accum"), ("zegclip_full", "zegclip_ddp"),
                             ("ldvc_dropout_accum", "ldvc_dropout_ddp")):
        r0, r1 = _load(out, other + "_rank0"), _load(out, other + "_rank1")
        assert all(torch.equal(r0[k], r1[k]) for k in r0), other  # DDP keeps the ranks in step, exactly
        ref = _load(out, reference + "_rank0")
        moved = _max_diff(ref, _load(out, reference + "_init"))
        diff = _max_diff(ref, r0)
        assert moved > 0 and diff < RTOL * moved, f"{other} differs from {reference} by {diff} (steps moved {moved})"


def _train_net(tmp_path, *args, env=None, check=True):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), *args], cwd=tmp_path,
                          env=env or os.environ.copy(), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_evaluation_with_two_processes_writes_the_same_metrics(tiny_data, tmp_path):
    root, _ = tiny_data
    torch.manual_seed(3)
    weights = str(tmp_path / "weights.pth")
    torch.save({"model": build_model(tiny_cfg(LDVC, "DATASETS.TRAIN", "()")).state_dict()}, weights)
    files = []
    for procs in ("1", "2"):
        out = str(tmp_path / f"eval{procs}")
        _train_net(tmp_path, "--config-file", os.path.join(REPO, LDVC), "--num-gpus", procs, "--dist-url", "auto",
                   "--eval-only", "--register", os.path.join(root, "register_tiny_shapes.py"),
                   "MODEL.CLIP.PRETRAINED", "", "MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{tiny_shapes.VAL}',)",
                   "OUTPUT_DIR", out)
        files.append(os.path.join(out, "inference", tiny_shapes.VAL, "sem_seg_metrics.json"))
    assert filecmp.cmp(*files, shallow=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_of_one_process_each(tiny_data, tmp_path):
    """--num-machines 2 on localhost: both "machines" train together, and the result is the 1-process
    run with accumulation over the same total batch (the dropout-free COMMON settings)."""
    root, _ = tiny_data
    args = ["--config-file", os.path.join(REPO, LDVC), "--register", os.path.join(root, "register_tiny_shapes.py"),
            "MODEL.CLIP.PRETRAINED", "", *COMMON, "SOLVER.IMS_PER_BATCH", "2", "SEED", "5"]
    url = f"tcp://127.0.0.1:{_free_port()}"
    machines = [subprocess.Popen([sys.executable, os.path.join(REPO, "train_net.py"), "--num-machines", "2",
                                  "--machine-rank", str(rank), "--dist-url", url, *args, "OUTPUT_DIR", f"m{rank}"],
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for rank in (0, 1)]
    logs = [m.communicate(timeout=600)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "World size: 2" in logs[0]
    _train_net(tmp_path, *args, "SOLVER.MAX_IMS_PER_GPU", "1", "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", "single")
    two = load_checkpoint_file(str(tmp_path / "m0" / "model_final.pth"))["model"]
    one = load_checkpoint_file(str(tmp_path / "single" / "model_final.pth"))["model"]
    moved = _max_diff(one, load_checkpoint_file(str(tmp_path / "single" / "model_0000000.pth"))["model"])  # step 2
    assert _max_diff(one, two) < RTOL * moved
    assert not (tmp_path / "m1" / "model_final.pth").exists()  # only the main process saves


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
