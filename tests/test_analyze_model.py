"""tools/analyze_model.py: parameter counts, fvcore FLOPs (with attention handles, ldvc_d2/utils/model_stats.py),
speed/memory, JSON."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from ldvc_d2.utils.model_stats import FLOP_HANDLES
from tests.conftest import REPO, tiny_cfg
from tests.scripts import load_script


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/analyze_model.py")


def test_parameter_table_matches_an_independent_sum(tool):
    model = build_model(tiny_cfg())
    for depth in (1, 2, 4):
        table = tool.parameter_table(model, depth)
        assert sum(r["total"] for r in table.values()) == sum(p.numel() for p in model.parameters())
        assert sum(r["trainable"] for r in table.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    table = tool.parameter_table(model, 1)
    assert set(table) == {"backbone", "sem_seg_head"}
    assert table["sem_seg_head"]["trainable"] == sum(p.numel() for p in model.sem_seg_head.parameters())
    prompts = model.backbone.visual.prompts.numel() + model.backbone.text.prompts.numel()
    vj_norms = sum(p.numel() for p in model.backbone.intermediate_norms.parameters())  # INTERMEDIATE_NORM learnable
    assert vj_norms == 2 * 2 * model.backbone.visual.width  # one LayerNorm (weight, bias) per LCTD block
    assert table["backbone"]["trainable"] == prompts + vj_norms


def test_attention_flop_handles_count_the_matrix_products(tool):
    class SDPA(torch.nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 5)
    from fvcore.nn import FlopCountAnalysis

    flops = FlopCountAnalysis(SDPA(), (q, k, v)).set_op_handle(**FLOP_HANDLES)
    assert flops.total() == 2 * 3 * 10 * 7 * (8 + 5)  # Q K^T and weights x V, multiply-adds
    class FastPathMHA(torch.nn.Module):
        """nn.MultiheadAttention's eval fast path (frozen CLIP runs it), called explicitly."""

        def __init__(self):
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x):
            m = self.mha
            return torch._native_multi_head_attention(x, x, x, 16, 4, m.in_proj_weight, m.in_proj_bias,
                                                      m.out_proj.weight, m.out_proj.bias, None, False, True, None)[0]

    x = torch.randn(2, 10, 16)
    module = FastPathMHA().eval().requires_grad_(False)
    fast = FlopCountAnalysis(module, (x,)).set_op_handle(**FLOP_HANDLES)
    fast.unsupported_ops_warnings(False)
    assert set(fast.by_operator()) == {"_native_multi_head_attention"}
    # fvcore's own handles on the slow path (linear + bmm) of the same layer: the same multiply-adds
    slow = FlopCountAnalysis(module.mha.train(), (x, x, x))
    slow.unsupported_ops_warnings(False)
    slow.uncalled_modules_warnings(False)
    assert fast.total() == slow.total() == 4 * 2 * 10 * 16 * 16 + 2 * 2 * 10 * 10 * 16


def test_run_on_the_tiny_model_writes_valid_json(tool, tmp_path, capsys):
    out = str(tmp_path / "analysis" / "result.json")
    config = os.path.join(REPO, "configs/demo.yaml")
    rc = tool.main(["--config-file", config, "--components", "model", "backbone", "--input-size", "64",
                    "--iters", "2", "--warmup", "1", "--output", out])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "GFLOPs cold" in printed and "peak MiB:" in printed and "warm ÷ row 1" in printed
    with open(out) as f:
        data = json.load(f)
    assert os.listdir(os.path.dirname(out)) == ["result.json"]
    model_row, backbone_row = data["results"]
    assert (model_row["component"], backbone_row["component"]) == ("model", "backbone")
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    assert model_row["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert model_row["parameters"]["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert backbone_row["parameters"]["total"] == sum(p.numel() for p in model.backbone.parameters())
    assert model_row["num_classes"] == 16 and model_row["input_size"] == [64, 64]
    for row in (model_row, backbone_row):
        cold, warm = row["flops"]["cold"], row["flops"]["warm"]
        assert cold["total"] > warm["total"] > 0
        # cold = warm + the text encoder over the 16 class names
        assert cold["total"] - warm["total"] == cold["by_module"]["backbone.text"]
        assert "backbone.text" not in warm["by_module"]
        for state in ("cold", "warm"):
            speed = row["speed"][state]
            assert speed["images_per_s"] > 0 and speed["memory_kind"] and len(speed["seconds"]) == 2
            assert speed["images_per_s"] == pytest.approx(2 / sum(speed["seconds"]))  # median of two = their mean
            if speed["added_memory_mb"] is not None:
                assert speed["peak_memory_mb"] == pytest.approx(row["speed"]["weights_mb"] + speed["added_memory_mb"])
    module_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    assert model_row["speed"]["weights_mb"] == pytest.approx(module_bytes / 2 ** 20)
    assert model_row["flops"]["warm"]["total"] > backbone_row["flops"]["warm"]["total"]
    assert model_row["flops"]["warm"]["by_module"]["sem_seg_head"] > 0


def test_models_are_timed_in_turn_and_the_cpu_clock_skips_waiting():
    """interleaved_speed: warm-ups first, then rounds of one image per model in turn; --clock cpu counts CPU
    time only (a model that sleeps costs ~0 CPU seconds but its sleep on the wall clock)."""
    import time

    from ldvc_d2.utils.speed import interleaved_speed

    calls = []

    def model(name, sleep=0.0):
        def run(image):
            calls.append(name)
            time.sleep(sleep)
        return run

    cpu = torch.device("cpu")
    image = torch.zeros(1)
    runs = [(model("a", 0.1), image, cpu), (model("b"), image, cpu)]
    wall = interleaved_speed(runs, iters=3, warmup=1, clock="wall")
    assert calls[:2] == ["a", "b"] and calls[2:8] == ["a", "b"] * 3  # warm-ups, then 3 rounds in turn
    assert [len(r["seconds"]) for r in wall] == [3, 3] and min(wall[0]["seconds"]) >= 0.1
    cpu_time = interleaved_speed(runs, iters=3, warmup=0, clock="cpu")
    assert cpu_time[0]["clock"] == "cpu" and max(cpu_time[0]["seconds"]) < 0.05
    with pytest.raises(ValueError, match="--clock"):
        interleaved_speed(runs, iters=1, warmup=0, clock="gpu")
