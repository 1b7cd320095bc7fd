"""C2S's schedule as MMSegmentation's defaults (decode head lr ×10, SyncBN students on GPUs) and its evaluation
model without the training-only latent decoder (seed 003 §4 "MMSeg defaults"; docs/c2s.md "Schedule")."""
import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from ldvc_d2.checkpoint import Checkpointer, IncompleteWeightsError
from ldvc_d2.engine.launch import maybe_sync_batchnorm
from ldvc_d2.solver import build_optimizer
from tests.conftest import registered_toy_dataset, tiny_cfg

SHAPES = "configs/c2s/shapes.yaml"
BASE_LR, WD, WD_NORM = 1e-3, 0.01, 0.0


@pytest.fixture(scope="module")
def toy_dataset():
    with registered_toy_dataset("ldvc_test_toy_c2s_schedule") as name:
        yield name


def _cfg(dataset, *opts):
    return tiny_cfg(SHAPES, "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)",
                    "MODEL.C2S.HEAD_LR_MULTIPLIER", "10.0", "SOLVER.BASE_LR", str(BASE_LR), "SOLVER.WEIGHT_DECAY",
                    str(WD), "SOLVER.WEIGHT_DECAY_NORM", str(WD_NORM), *opts)


def _groups_by_name(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("student,head", [("segformer_tiny", ("student.model.decode_head.",)),
                                          ("setr_tiny", ("student.norm.", "student.head.", "student.proj."))])
def test_decode_head_and_latent_decoder_train_at_ten_times_the_lr(toy_dataset, student, head):
    cfg = _cfg(toy_dataset, "MODEL.C2S.STUDENT", student)
    model = build_model(cfg)
    got = _groups_by_name(model, build_optimizer(cfg, model))
    norms = {f"{m}.{n}" for m, mod in model.named_modules() if isinstance(mod, (nn.LayerNorm, nn.BatchNorm2d,
                                                                                  nn.GroupNorm))
             for n, _ in mod.named_parameters(recurse=False)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(got) == trainable and not any(n.startswith("text.") for n in got)
    assert any(n.startswith("latent_decoder.") for n in got) and any(n.startswith(head) for n in got)
    for name, (lr, wd) in got.items():
        in_head = name.startswith(head + ("latent_decoder.",))
        assert lr == pytest.approx(BASE_LR * (10.0 if in_head else 1.0)), name
        assert wd == (WD_NORM if name in norms else WD), name


def test_student_batchnorm_becomes_syncbn_only_on_multi_process_cuda(toy_dataset, caplog):
    model = build_model(_cfg(toy_dataset))
    params = {n: p for n, p in model.named_parameters()}
    batchnorms = [n for n, m in model.named_modules() if type(m) is nn.BatchNorm2d]
    assert batchnorms and all(n.startswith("student.") for n in batchnorms)
    assert maybe_sync_batchnorm(model, 1, device_type="cuda") is model
    maybe_sync_batchnorm(model, 2, device_type="cpu")
    assert all(type(model.get_submodule(n)) is nn.BatchNorm2d for n in batchnorms)  # CPU: kept per process
    assert "SyncBatchNorm needs CUDA" in caplog.text
    maybe_sync_batchnorm(model, 2, device_type="cuda")
    assert all(type(model.get_submodule(n)) is nn.SyncBatchNorm for n in batchnorms)
    assert not any(isinstance(m, nn.BatchNorm2d) and not isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert all(p is params[n] for n, p in model.named_parameters())  # same tensors: checkpoints unchanged
    cfg = _cfg(toy_dataset)
    got = _groups_by_name(model, build_optimizer(cfg, model))
    assert all(got[f"{n}.{w}"][1] == WD_NORM for n in batchnorms for w in ("weight", "bias"))


def test_evaluation_model_has_no_latent_decoder_and_loads_a_training_checkpoint(toy_dataset, tmp_path):
    torch.manual_seed(0)
    trained = build_model(_cfg(toy_dataset))
    Checkpointer(trained, str(tmp_path)).save("model_final")
    path = str(tmp_path / "model_final.pth")
    full = build_model(_cfg(toy_dataset))
    model = full.for_inference()
    state = model.state_dict()
    assert not any(k.startswith(("latent_decoder.", "bank.")) for k in state)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in model.student.parameters()) + sum(p.numel() for p in model.text.parameters())
    checkpointer = Checkpointer(model)
    checkpointer.load(path)
    assert checkpointer.load_status["status"].startswith("complete")
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
    # a missing student tensor is still an error, and the training model still needs the decoder's tensors
    broken = {k: v for k, v in trained.state_dict().items() if k != "student.proj.weight"
              and not k.startswith("student.model.decode_head.classifier.weight")}
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(IncompleteWeightsError, match="student"):
        Checkpointer(build_model(_cfg(toy_dataset)).for_inference()).load(str(tmp_path / "broken.pth"))
    no_decoder = {k: v for k, v in trained.state_dict().items() if not k.startswith("latent_decoder.")}
    torch.save({"model": no_decoder}, tmp_path / "no_decoder.pth")
    with pytest.raises(IncompleteWeightsError, match="latent_decoder"):
        Checkpointer(build_model(_cfg(toy_dataset))).load(str(tmp_path / "no_decoder.pth"))
