"""Mixed precision: SOLVER.AMP training in the accumulating trainer and half-precision inference
(MODEL.SEGMENTOR.INFERENCE.PRECISION), on the CPU, against the same model in fp32.

Bounds (measured on tiny random-weight models, CPU, torch 2.14, in brackets): bf16 training loss within
2% of fp32's [0.5%], parameters after one SGD step within 5% of the fp32 step's size [1.3%]; bf16 gradient
accumulation (4 micro-batches) within 5% of the bf16 full-batch step [1.5%; averaging the micro-batch
losses instead, the error accumulation must avoid, is off by far more]; inference scores (in [0, 1]) within
1e-2 of fp32 in bf16 [4.4e-3] and 2e-3 in fp16 [5.9e-4].
"""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ldvc_d2.engine.train_loop import AccumulatingTrainer
from tests.conftest import registered_toy_dataset, tiny_cfg
from tests.test_schedule import _FixedStream

CONFIGS = {"LDVC": "configs/demo.yaml", "ZegCLIP": "configs/shapes/zegclip.yaml",
           "CLIPtrase": "configs/cliptrase/shapes.yaml"}
NO_DROPOUT = ("MODEL.LDVC.LCTD.DROPOUT", "0.0", "MODEL.LDVC.LCTD.ATTN_DROPOUT", "0.0", "MODEL.ZEGCLIP.DROPOUT", "0.0",
              "MODEL.ZEGCLIP.ATTN_DROPOUT", "0.0", "MODEL.CLIP.VISUAL_PROMPT_DROPOUT", "0.0")


@pytest.fixture(scope="module")
def toy_dataset():
    with registered_toy_dataset("ldvc_test_amp") as name:
        yield name


def _model(dataset, method, *opts):
    cfg = tiny_cfg(CONFIGS[method], "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)", *opts)
    torch.manual_seed(0)
    return build_model(cfg)


def _batch():
    """4 images; two hold no training class (all ignore; all unseen class 2): unequal loss normalisers."""
    g = torch.Generator().manual_seed(0)
    labels = [torch.randint(0, 5, (64, 64), generator=g), torch.full((64, 64), 255),
              torch.randint(0, 5, (64, 64), generator=g), torch.full((64, 64), 2)]
    return [{"image": torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8), "sem_seg": t} for t in labels]


def _sgd(model):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)


def _step(model, start, micro_batches, amp_dtype, init_scale=None):
    """One optimizer step from ``start``: (logged total loss, parameters after the step, trainer)."""
    model.load_state_dict(start)
    trainer = AccumulatingTrainer(model, _FixedStream(micro_batches), _sgd(model), amp_dtype=amp_dtype)
    if init_scale is not None:
        trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.run_step()
        loss = storage.history("total_loss").latest()
    return loss, {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("method", ["LDVC", "ZegCLIP"])
def test_bf16_training_step_is_close_to_fp32_and_its_loss_is_fp32(toy_dataset, method):
    model = _model(toy_dataset, method, *NO_DROPOUT).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(_batch())
    assert {v.dtype for v in losses.values()} == {torch.float32}  # the loss itself is taken in fp32
    start = {k: v.clone() for k, v in model.state_dict().items()}
    loss32, after32, _ = _step(model, start, [_batch()], None)
    loss16, after16, _ = _step(model, start, [_batch()], torch.bfloat16)
    moved = _max_diff(after32, start)
    assert moved > 0 and loss16 != loss32  # autocast did run
    assert abs(loss16 - loss32) < 0.02 * abs(loss32), (loss16, loss32)
    assert _max_diff(after16, after32) < 0.05 * moved


def test_bf16_gradient_accumulation_equals_the_full_batch(toy_dataset):
    model = _model(toy_dataset, "LDVC", *NO_DROPOUT).train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _batch()
    _, full, _ = _step(model, start, [batch], torch.bfloat16)
    _, accumulated, _ = _step(model, start, [[x] for x in batch], torch.bfloat16)
    moved = _max_diff(full, start)
    assert moved > 0 and _max_diff(accumulated, full) < 0.05 * moved


def test_float16_uses_a_grad_scaler_that_resumes(toy_dataset):
    """float16: the loss is scaled; with GradScaler's initial 2^16 the focal loss (weight 100) overflows fp16
    gradients, so the step is skipped and the scale halved; at a scale that fits, the step is fp32's within
    5%. The scaler's state is part of the trainer's checkpoint."""
    model = _model(toy_dataset, "LDVC", *NO_DROPOUT).train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _batch()[:1]
    _, after32, _ = _step(model, start, [batch], None)
    _, skipped, trainer = _step(model, start, [batch], torch.float16)
    state = trainer.state_dict()
    assert "grad_scaler" in state and "optimizer" in state
    scale = state["grad_scaler"]["scale"]
    assert _max_diff(skipped, start) == 0 and scale == 2.0 ** 15
    _, after16, _ = _step(model, start, [batch], torch.float16, init_scale=2.0 ** 8)
    assert 0 < _max_diff(after16, after32) < 0.05 * _max_diff(after32, start)
    fresh = AccumulatingTrainer(model, _FixedStream([batch]), _sgd(model), amp_dtype=torch.float16)
    fresh.load_state_dict(state)
    assert fresh.grad_scaler.get_scale() == scale
    assert AccumulatingTrainer(model, _FixedStream([batch]), _sgd(model), amp_dtype=torch.bfloat16).grad_scaler is None


@pytest.mark.parametrize("method", ["LDVC", "ZegCLIP", "CLIPtrase"])
def test_half_precision_inference_is_close_to_fp32(toy_dataset, method):
    g = torch.Generator().manual_seed(1)
    inputs = [{"image": torch.randint(0, 256, (3, 64, 150), generator=g, dtype=torch.uint8)}]
    window = ("MODEL.SEGMENTOR.INFERENCE.CROP_SIZE", "64", "MODEL.SEGMENTOR.INFERENCE.STRIDE", "40")
    scores = {p: _model(toy_dataset, method, *window, "MODEL.SEGMENTOR.INFERENCE.PRECISION", p).eval()(inputs)[0]["sem_seg"]
              for p in ("fp32", "bf16", "fp16")}
    for precision, bound in (("bf16", 1e-2), ("fp16", 2e-3)):
        assert scores[precision].dtype == torch.float32
        diff = (scores[precision] - scores["fp32"]).abs().max().item()
        assert 0 < diff < bound, (precision, diff)


def test_precision_keys_are_checked():
    from ldvc_d2.config import validate_config

    cfg = tiny_cfg("configs/demo.yaml", "MODEL.SEGMENTOR.INFERENCE.PRECISION", "half", "SOLVER.AMP.DTYPE", "fp8")
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE is 'fp8'.*MODEL.SEGMENTOR.INFERENCE.PRECISION is 'half'"):
        validate_config(cfg, training=False)
