"""tools/gpu_check.py --dry-run: the GPU check's own code (every method trained in fp32, fp16 with the
GradScaler and bf16, evaluated at each precision; CLIPtrase; the ONNX export run by onnxruntime; the
LCSA rows of benchmark_speed) runs on the CPU at tiny sizes, so the command documented for a GPU cannot
rot unnoticed. Its JSON and markdown table must agree with each other."""
import json

from tests.scripts import load_script


def test_dry_run_passes_every_check_and_writes_json_and_table(tmp_path):
    tool = load_script("tools/gpu_check.py")
    status = tool.main(["--dry-run", "--methods", "ldvc,zegclip,deop,c2s", "--output", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    table = (tmp_path / "gpu_check.md").read_text()
    failed = {k: v["error"] for k, v in saved["checks"].items() if v["status"] != "ok"}
    assert status == 0 and not failed, failed
    expected = {f"{kind}_{m}_{p}" for kind in ("train", "eval") for m in ("ldvc", "zegclip", "deop", "c2s")
                for p in ("fp32", "fp16", "bf16")} | {"cliptrase_336", "onnx_export", "benchmark_speed"}
    assert set(saved["checks"]) == expected
    for name, check in saved["checks"].items():
        assert f"| {name} | ok |" in table
        assert check["seconds"] > 0
    assert saved["checks"]["train_ldvc_fp16"]["grad_scaler"] and not saved["checks"]["train_ldvc_bf16"]["grad_scaler"]
    assert all(len(saved["checks"][f"train_{m}_fp32"]["losses"]) == 1 for m in ("ldvc", "c2s"))
    assert saved["checks"]["onnx_export"]["max_abs_difference"] <= 1e-3
    lcsa = saved["checks"]["benchmark_speed"]["lcsa"]["8"]
    assert set(lcsa) == {"inference", "training", "training_dropout"} and "lcsa 8x8 training_dropout" in table
    assert not (tmp_path / "ldvc.onnx").exists()  # the exported file is removed after the check
