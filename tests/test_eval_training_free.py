"""tools/eval_training_free.py: CLIPtrase's shapes configs stand in for the benchmarks, on a two-image
dataset of our own; a benchmark whose dataset is missing is skipped by name. The table's numbers are
recomputed here from each run's confusion matrix (mmseg's rule, written out). The tool's train_net.py
processes run in the test process (train_net's parser and main, same arguments)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ldvc_d2.evaluation import load_confusion_matrix
from tests.conftest import REPO
from tests.scripts import load_script, run_train_net

REGISTER = '''import os
import numpy as np
from PIL import Image
from ldvc_d2.data import register_zero_shot_folder
root = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(0)
for sub in ("images", "labels"):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
for i in range(2):
    if not os.path.exists(os.path.join(root, "labels", f"im{i}.png")):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(os.path.join(root, "images", f"im{i}.png"))
        Image.fromarray(rng.integers(0, 3, (48, 64)).astype(np.uint8)).save(os.path.join(root, "labels", f"im{i}.png"))
register_zero_shot_folder("ldvc_test_tf_val", os.path.join(root, "images"), os.path.join(root, "labels"),
                          ["red circle", "green square", "blue star"], [0, 1, 2], image_ext=".png")
'''


def _config(tmp_path, name, base, dataset):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f'_BASE_: "{os.path.join(REPO, base)}"\nDATASETS:\n  TEST: ("{dataset}",)\n')
    return str(path)


def _miou_mmseg(conf):
    """mmseg's IoUMetric from a (C+1)x(C+1) matrix (last row: ignored pixels): NaN classes left out."""
    c = conf.shape[0] - 1
    tp = np.diag(conf)[:c].astype(float)
    union = conf[:c, :c].sum(1) + conf[:c, :c].sum(0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100 * np.nanmean(tp / union)


def _train_net_here(cmd, stdout, stderr):
    """Stands in for the tool's ``subprocess.run`` of ``python train_net.py ...``: the same arguments, run by
    train_net's parser and main in this process (tests/scripts.py run_train_net)."""
    assert cmd[:2] == [sys.executable, os.path.join(REPO, "train_net.py")], cmd
    run_train_net(*cmd[2:])
    return subprocess.CompletedProcess(cmd, 0)


def test_table_of_two_stand_ins_and_a_missing_dataset(tmp_path, monkeypatch, capsys):
    tool = load_script("tools/eval_training_free.py")
    monkeypatch.setattr(tool.subprocess, "run", _train_net_here)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "register.py").write_text(REGISTER)
    monkeypatch.chdir(tmp_path)  # relative "datasets" root: no Cityscapes here
    configs = [f"plain={_config(tmp_path, 'plain', 'configs/cliptrase/shapes_clip.yaml', 'ldvc_test_tf_val')}",
               f"cliptrase={_config(tmp_path, 'cliptrase', 'configs/cliptrase/shapes.yaml', 'ldvc_test_tf_val')}",
               f"cityscapes={_config(tmp_path, 'city', 'configs/cliptrase/shapes.yaml', 'cityscapes_val')}"]
    out = str(tmp_path / "out")
    args = ["--configs", *configs, "--register", str(tmp_path / "tiny" / "register.py"), "--output", out,
            "MODEL.CLIP.PRETRAINED", "", "DATALOADER.NUM_WORKERS", "0"]
    assert tool.main(args) == 0
    printed = capsys.readouterr().out
    assert "skip cityscapes: dataset not ready" in printed and "python datasets/prepare_cityscapes.py" in printed
    assert "[1/3] plain: ldvc_test_tf_val (2 images)" in printed and "1 left (2 images), about" in printed

    table = json.loads((tmp_path / "out" / "table.json").read_text())
    rows = {r["name"]: r for r in table["benchmarks"]}
    assert [r["status"] for r in table["benchmarks"]] == ["evaluated", "evaluated", "skipped"]
    assert rows["cityscapes"]["label"] == "City" and "mIoU" not in rows["cityscapes"]
    mious = []
    for name in ("plain", "cliptrase"):
        folder = os.path.join(out, name, "inference", "ldvc_test_tf_val")
        expected = _miou_mmseg(load_confusion_matrix(folder, 3))
        assert rows[name]["mIoU"] == pytest.approx(expected, abs=1e-6)
        report = json.loads(open(os.path.join(folder, "sem_seg_metrics.json")).read())
        assert rows[name]["protocol"] == report["protocol"] and report["protocol"].startswith("CLIPtrase")
        assert rows[name]["num_images"] == 2
        mious.append(expected)
    assert "(plain CLIP)" in rows["plain"]["protocol"] and "(plain CLIP)" not in rows["cliptrase"]["protocol"]
    assert table["average_miou"] == pytest.approx(np.mean(mious)) and table["num_evaluated"] == 2
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert f"| mIoU (%) | {mious[0]:.1f} | {mious[1]:.1f} | – | {np.mean(mious):.1f} (2 of 3) |" in markdown
    assert "| City | cityscapes_val | – | skipped |" in markdown

    # results in place are reused: no process is started
    monkeypatch.setattr(tool.subprocess, "run", lambda *a, **k: pytest.fail("re-evaluated"))
    assert tool.main(args) == 0
    assert "reused earlier result" in capsys.readouterr().out


def test_config_choices_are_checked(tmp_path):
    tool = load_script("tools/eval_training_free.py")
    with pytest.raises(ValueError, match="no folder configs/nosuch/"):
        tool.resolve_runs("nosuch", None, None)
    config = os.path.join(REPO, "configs/cliptrase/shapes.yaml")
    with pytest.raises(ValueError, match=r"names \['shapes'\] appear twice"):
        tool.resolve_runs(None, None, [config, config])
    with pytest.raises(ValueError, match="not found: .*missing.yaml"):
        tool.resolve_runs(None, None, [f"a={tmp_path / 'missing.yaml'}"])
    runs = tool.resolve_runs(None, None, [f"a={config}", f"b={config}"])
    assert [(r.name, r.config) for r in runs] == [("a", config), ("b", config)]
    # overrides written right after a list option are overrides, not configs or benchmarks
    args = tool.parse_args(["--configs", f"a={config}", "MODEL.DEVICE", "cpu"])
    assert (args.configs, args.opts) == ([f"a={config}"], ["MODEL.DEVICE", "cpu"])
    args = tool.parse_args(["--method", "sclip", "--benchmarks", "voc21", "ade150", "MODEL.DEVICE", "cpu"])
    assert (args.benchmarks, args.opts) == (["voc21", "ade150"], ["MODEL.DEVICE", "cpu"])
    with pytest.raises(SystemExit):
        tool.parse_args(["--method", "sclip", "--benchmarks", "voc21", "cityscape"])
