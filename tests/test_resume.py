"""Exact resume: a run killed with SIGKILL after a checkpoint and resumed with --resume
ends with the same weights, bit for bit, as a run that was never interrupted. Dropout (0.1) and
photometric distortion are on, and the two runs use different numbers of data-loader workers: the data
stream and the random draws depend on (seed, iteration, position) alone.

The run to be killed stops itself (SIGSTOP) right after writing its 4th iteration's checkpoint, through
an extra --register file that wraps Checkpointer.save: however fast the machine, the kill lands before
the remaining iterations, and the resumed run starts exactly at iteration 4. The killed run is a
train_net.py process; the uninterrupted run and the resumed one run train_net's parser and ``main`` in this
process (tests/scripts.py ``run_train_net``), with the killed process given this process's thread count."""
import os
import re
import signal
import subprocess
import sys
import time

import torch

from ldvc_d2.checkpoint import load_checkpoint_file
from tests import tiny_shapes
from tests.conftest import REPO
from tests.scripts import run_train_net

OPTS = ["MODEL.CLIP.PRETRAINED", "", "DATASETS.TRAIN", f"('{tiny_shapes.TRAIN}',)", "DATASETS.TEST", "()",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "8", "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "2",
        "INPUT.PHOTOMETRIC_DISTORTION", "True", "SEED", "3"]


def _args(root: str, *args: str):
    return ["--config-file", os.path.join(REPO, "configs/demo.yaml"), "--register",
            os.path.join(root, "register_tiny_shapes.py"), *args, *OPTS]


STOP_AFTER_CHECKPOINT = """import os, signal
from ldvc_d2.checkpoint import Checkpointer

_save = Checkpointer.save


def save(self, name, **kwargs):
    _save(self, name, **kwargs)
    if name == "model_0000003":
        os.kill(os.getpid(), signal.SIGSTOP)  # wait here for the test's SIGKILL


Checkpointer.save = save
"""


def _state(pid: int) -> str:
    """Linux process state letter ("T" = stopped) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(tmp_path):
    root = str(tmp_path / "data")
    tiny_shapes.make(root)
    run_train_net(*_args(root, "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "full")))

    cut = tmp_path / "cut"
    stop = tmp_path / "stop_after_checkpoint.py"
    stop.write_text(STOP_AFTER_CHECKPOINT)
    command = [sys.executable, os.path.join(REPO, "train_net.py"),
               *_args(root, "--register", str(stop), "DATALOADER.NUM_WORKERS", "1", "OUTPUT_DIR", "cut")]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # as the runs in this process
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        # the run stops itself (SIGSTOP) once save() has returned, i.e. after the checkpoint file and the
        # last_checkpoint tag are both written: wait for that state, not only for the file
        while not (cut / "model_0000003.pth").exists() or _state(proc.pid) != "T":
            assert proc.poll() is None and time.time() < deadline, "the run ended before its 4th iteration's checkpoint"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its data-loader worker
        proc.wait()
    assert not (cut / "model_final.pth").exists(), "the run finished before it was killed: nothing to resume"

    _, log = run_train_net(*_args(root, "--resume", "DATALOADER.NUM_WORKERS", "1", "OUTPUT_DIR", str(cut)))
    start = int(re.search(r"Starting training from iteration (\d+)", log).group(1))
    assert start == 4

    full = load_checkpoint_file(str(tmp_path / "full" / "model_final.pth"))["model"]
    resumed = load_checkpoint_file(str(cut / "model_final.pth"))["model"]
    initial = load_checkpoint_file(str(cut / "model_0000001.pth"))["model"]
    assert any(not torch.equal(full[k], initial[k]) for k in full)  # the last iterations moved the weights
    different = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not different, different
