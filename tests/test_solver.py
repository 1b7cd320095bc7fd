"""Optimizer groups and the warm-up + poly schedule (paper §4.1)."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from ldvc_d2 import add_ldvc_config
from ldvc_d2.solver import PolyParamScheduler, build_lr_scheduler, build_optimizer, param_groups, warmup_fraction
from tests.conftest import tiny_cfg


def test_poly_schedule_values():
    s = PolyParamScheduler(0.9, end=0.1)
    assert s(0.0) == 1.0
    assert s(0.5) == pytest.approx(0.1 + 0.9 * 0.5 ** 0.9)
    assert s(0.999999) == pytest.approx(0.1, abs=1e-4)


def test_optimizer_covers_trainable_parameters_only(caplog):
    cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", "()", "SOLVER.PROMPT_LR_MULTIPLIER", "10.0")
    model = build_model(cfg)
    with caplog.at_level("INFO"):
        opt = build_optimizer(cfg, model)
    assert "Trainable parameters:" in caplog.text and "prompts" in caplog.text
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_opt == trainable
    assert isinstance(opt, torch.optim.AdamW)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    norm = model.sem_seg_head.blocks[0].norm_sa.weight
    assert by_id[id(norm)]["weight_decay"] == 0.0
    assert by_id[id(model.sem_seg_head.blocks[0].self_attn.qkv.weight)]["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY
    assert by_id[id(model.backbone.visual.prompts)]["lr"] == pytest.approx(10 * cfg.SOLVER.BASE_LR)


def test_warmup_then_poly_decay():
    cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", "()", "SOLVER.MAX_ITER", "100", "SOLVER.WARMUP_ITERS", "10",
                   "SOLVER.BASE_LR", "1.0", "SOLVER.WARMUP_FACTOR", "0.0")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.0) and lrs[5] == pytest.approx(0.5 * (1 - 0.1) ** 0.9, rel=1e-6)  # linear ramp to the poly value at iter 10
    assert lrs[50] == pytest.approx((1 - 0.5) ** 0.9, rel=1e-6)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_warmup_longer_than_the_run_is_clamped_with_a_warning(caplog):
    """MAX_ITER <= WARMUP_ITERS would ramp towards the end-of-schedule lr: the warm-up is
    clamped to SOLVER.WARMUP_MAX_FRACTION of the run and the lr then follows the poly schedule."""
    cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", "()", "SOLVER.MAX_ITER", "40", "SOLVER.WARMUP_ITERS", "50",
                   "SOLVER.BASE_LR", "1.0", "SOLVER.WARMUP_FACTOR", "0.0", "SOLVER.POLY_LR_MIN", "0.0")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    with caplog.at_level("WARNING"):
        sched = build_lr_scheduler(cfg, opt)
    assert "SOLVER.WARMUP_ITERS (50)" in caplog.text and "clamped to 20" in caplog.text
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = (1 - 20 / 40) ** 0.9
    assert lrs[10] == pytest.approx(0.5 * peak, rel=1e-6) and lrs[20] == pytest.approx(peak, rel=1e-6)
    assert lrs[30] == pytest.approx((1 - 30 / 40) ** 0.9, rel=1e-6)
    assert max(lrs) == pytest.approx(peak, rel=1e-6)


def test_warmup_within_the_limit_is_kept(caplog):
    cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", "()", "SOLVER.MAX_ITER", "500", "SOLVER.WARMUP_ITERS", "50")
    with caplog.at_level("WARNING"):
        assert warmup_fraction(cfg) == pytest.approx(0.1)
    assert "clamped" not in caplog.text
    with pytest.raises(ValueError, match="SOLVER.WARMUP_MAX_FRACTION"):
        warmup_fraction(tiny_cfg("configs/demo.yaml", "SOLVER.WARMUP_MAX_FRACTION", "0.0"))


def test_full_model_clipping_scales_every_gradient_by_one_norm():
    """CLIP_TYPE "full_model": one L2 norm over all updated gradients (not detectron2's per-parameter clipping)."""
    cfg = get_cfg()
    add_ldvc_config(cfg)
    cfg.merge_from_list(["SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "1.0", "SOLVER.MOMENTUM", "0.0",
                         "SOLVER.WEIGHT_DECAY", "0.0", "SOLVER.WEIGHT_DECAY_NORM", "0.0",
                         "SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model",
                         "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.5"])
    model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.zero_()
        model[1].weight.zero_()
    opt = build_optimizer(cfg, model)
    model[0].weight.grad = torch.tensor([[3.0, 0.0]])
    model[1].weight.grad = torch.tensor([[4.0]])  # joint norm 5 -> every gradient x 0.5 / 5
    opt.step()
    torch.testing.assert_close(model[0].weight, torch.tensor([[-0.3, 0.0]]))
    torch.testing.assert_close(model[1].weight, torch.tensor([[-0.4]]))
    # per-parameter "norm" clipping would give [-0.5, 0] and [-0.5]: the two differ
    assert isinstance(opt, torch.optim.SGD)


def test_a_model_names_its_own_lr_roles():
    """``lr_multipliers()``: the longest matching prefix sets a parameter's role and lr multiplier."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.student = torch.nn.ModuleDict({"backbone": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 2)})
            self.other = torch.nn.Linear(2, 2)

        def lr_multipliers(self):
            return {"student": ("student", 1.0), "student.head": ("decode head", 10.0)}

    cfg = get_cfg()
    add_ldvc_config(cfg)
    groups = {g["name"]: g for g in param_groups(Net(), cfg)}
    assert groups["decode head"]["names"] == ["student.head.weight", "student.head.bias"]
    assert groups["decode head"]["lr"] == 10 * cfg.SOLVER.BASE_LR
    assert groups["student"]["names"] == ["student.backbone.weight", "student.backbone.bias"]
    assert groups["head"]["names"] == ["other.weight", "other.bias"] and groups["head"]["lr"] == cfg.SOLVER.BASE_LR
