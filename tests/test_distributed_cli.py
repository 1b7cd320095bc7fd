"""train_net.py with several CPU processes (gloo), as a user runs it on a machine without CUDA.

* Evaluation with 2 processes (``--num-gpus 2``: train_net.py's launch spawns them) writes the same
  sem_seg_metrics.json, byte for byte, as with 1.
* Two "machines" of one process each (--num-machines 2, --machine-rank, --dist-url on 127.0.0.1; each
  machine's process is the one started) train together, and the result is the 1-process run with
  accumulation over the same total batch.

The several-process runs are train_net.py processes; each 1-process reference runs train_net's parser and
``main`` in this process (what train_net.py does for one process: tests/scripts.py ``run_train_net``).
"""
import filecmp
import os
import subprocess
import sys

import pytest
import torch

import ldvc_d2  # noqa: F401  (first: the detectron2 v0.6 shims)
from detectron2.modeling import build_model

from ldvc_d2.checkpoint import load_checkpoint_file
from tests import tiny_shapes
from tests.browser import free_port
from tests.conftest import REPO, tiny_cfg
from tests.scripts import run_train_net
from tests.test_distributed import COMMON, LDVC, RTOL, _max_diff

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path of several processes")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_shapes")
    return str(root), tiny_shapes.make(str(root))


def _train_net(tmp_path, *args):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
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
        args = ["--config-file", os.path.join(REPO, LDVC), "--num-gpus", procs, "--dist-url", "auto",
                "--eval-only", "--register", os.path.join(root, "register_tiny_shapes.py"),
                "MODEL.CLIP.PRETRAINED", "", "MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{tiny_shapes.VAL}',)",
                "OUTPUT_DIR", out]
        if procs == "1":
            run_train_net(*args)
        else:  # no data-loader workers: in the spawned ranks they would be spawned too, each importing everything
            _train_net(tmp_path, *args, "DATALOADER.NUM_WORKERS", "0")
        files.append(os.path.join(out, "inference", tiny_shapes.VAL, "sem_seg_metrics.json"))
    assert filecmp.cmp(*files, shallow=False)


def test_two_machines_of_one_process_each(tiny_data, tmp_path):
    """--num-machines 2 on localhost: both "machines" train together, and the result is the 1-process
    run with accumulation over the same total batch (the dropout-free COMMON settings)."""
    root, _ = tiny_data
    args = ["--config-file", os.path.join(REPO, LDVC), "--register", os.path.join(root, "register_tiny_shapes.py"),
            "MODEL.CLIP.PRETRAINED", "", *COMMON, "SOLVER.IMS_PER_BATCH", "2", "SEED", "5"]
    url = f"tcp://127.0.0.1:{free_port()}"
    machines = [subprocess.Popen([sys.executable, os.path.join(REPO, "train_net.py"), "--num-machines", "2",
                                  "--machine-rank", str(rank), "--dist-url", url, *args, "OUTPUT_DIR", f"m{rank}"],
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for rank in (0, 1)]
    try:  # the reference trains here while the machines start
        run_train_net(*args, "SOLVER.MAX_IMS_PER_GPU", "1", "SOLVER.CHECKPOINT_PERIOD", "1",
                      "OUTPUT_DIR", str(tmp_path / "single"))
    finally:
        logs = [m.communicate(timeout=600)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "World size: 2" in logs[0]
    two = load_checkpoint_file(str(tmp_path / "m0" / "model_final.pth"))["model"]
    one = load_checkpoint_file(str(tmp_path / "single" / "model_final.pth"))["model"]
    moved = _max_diff(one, load_checkpoint_file(str(tmp_path / "single" / "model_0000000.pth"))["model"])  # step 2
    assert _max_diff(one, two) < RTOL * moved
    assert not (tmp_path / "m1" / "model_final.pth").exists()  # only the main process saves
