"""tools/benchmark_shapes.py's run orchestration (no training: train_net.py is replaced by a stub that
writes a metrics file): every (variant, seed) runs once, ``--jobs N`` runs them concurrently and
single-threaded, and the summary is mean / population std over seeds."""
import importlib.util
import json
import os
import threading
import time

import numpy as np

from tests.conftest import REPO


def _load_tool():
    path = os.path.join(REPO, "tools", "benchmark_shapes.py")
    spec = importlib.util.spec_from_file_location("benchmark_shapes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parallel_runs_are_single_threaded_and_summarised(tmp_path, monkeypatch):
    tool = _load_tool()
    calls, active, peak, lock = [], [0], [0], threading.Lock()

    def fake_run(cmd, stdout, stderr, check, env):  # stands in for one train_net.py process
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        out = cmd[cmd.index("OUTPUT_DIR") + 1]
        seed = int(cmd[cmd.index("SEED") + 1])
        path = os.path.join(out, "inference", "shapes_zs_val")
        os.makedirs(path)
        with open(os.path.join(path, "sem_seg_metrics.json"), "w") as f:
            json.dump({"metrics": {"pAcc": 50.0 + seed, "mIoU(S)": 30.0, "mIoU(U)": 40.0 + 2 * seed, "hIoU": 35.0}}, f)
        with lock:
            active[0] -= 1
            calls.append((cmd[cmd.index("--config-file") + 1], seed, env.get("OMP_NUM_THREADS")))

    monkeypatch.setattr(tool.subprocess, "run", fake_run)
    monkeypatch.setattr("ldvc_d2.benchmarks.shapes.dataset.generate_shapes_dataset", lambda root: None)
    monkeypatch.setattr("ldvc_d2.benchmarks.shapes.cache.ensure_tiny_clip", lambda: "clip.pt")
    monkeypatch.setattr("torch.load", lambda *a, **k: {"ldvc_tiny_clip": {"accuracy": 77.0, "chance": 6.25}})
    monkeypatch.setattr(tool, "plot", lambda *a: None)
    out = tmp_path / "bench"
    variants = ["ldvc_vj_none", "ldvc_vj_learnable"]
    assert tool.main(["--variants", *variants, "--seeds", "0", "1", "2", "--jobs", "3", "--output", str(out)]) == 0
    assert sorted((os.path.basename(c), s) for c, s, _ in calls) == sorted(
        (f"{v}.yaml", s) for v in variants for s in (0, 1, 2))
    assert {threads for *_, threads in calls} == {"1"} and peak[0] > 1
    result = json.loads((out / "benchmark.json").read_text())
    u = [40.0, 42.0, 44.0]
    assert result["summary"]["ldvc_vj_learnable"]["mIoU(U)"] == [np.mean(u), np.std(u)]
    assert result["jobs"] == 3
    calls.clear()  # finished runs are not run again
    assert tool.main(["--variants", *variants, "--seeds", "0", "1", "2", "--output", str(out)]) == 0
    assert calls == []
