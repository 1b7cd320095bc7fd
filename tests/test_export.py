"""tools/export_model.py: ONNX for a fixed vocabulary, checked with onnxruntime against the model's
own whole-image inference (a path through ZeroShotSegmentor.inference the export does not use)."""
import os

import pytest
import torch
from detectron2.modeling import build_model

from ldvc_d2.checkpoint import Checkpointer
from tests.conftest import registered_toy_dataset, tiny_cfg
from tests.scripts import load_script

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[export])")

CONFIGS = {"LDVC": "configs/demo.yaml", "ZegCLIP": "configs/shapes/zegclip.yaml"}
TINY = ("MODEL.CLIP.MODEL", "LDVC-Tiny", "MODEL.CLIP.PRETRAINED", "")
BOUND = 1e-4  # measured max |onnxruntime - PyTorch|: 1.2e-7 (LDVC), 6e-8 (ZegCLIP)


@pytest.fixture(scope="module")
def toy_dataset():
    with registered_toy_dataset("ldvc_test_export") as name:
        yield name


def _trained_weights(dataset, method, folder, *opts):
    """A random model whose trainable tensors were moved off their init, saved as a checkpoint: the export
    must load them (a model left at its init would give other scores)."""
    cfg = tiny_cfg(CONFIGS[method], "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)", *opts)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    Checkpointer(model, save_dir=str(folder)).save("model_final")
    return model, os.path.join(str(folder), "model_final.pth")


@pytest.mark.parametrize("method", ["LDVC", "ZegCLIP"])
def test_exported_model_matches_pytorch_inference(toy_dataset, method, tmp_path):
    import numpy as np

    model, weights = _trained_weights(toy_dataset, method, tmp_path)
    output = str(tmp_path / "export" / "model.onnx")
    names = ["red circle", "blue star", "lamp"]
    diff = load_script("tools/export_model.py").main([
        "--config-file", CONFIGS[method], "--dataset-classes", toy_dataset, "--output", output,
        "--image-size", "64x96", *TINY, "DATASETS.TRAIN", f"('{toy_dataset}',)", "MODEL.WEIGHTS", weights])
    assert diff <= BOUND
    assert os.listdir(tmp_path / "export") == ["model.onnx"]  # no temporary file left
    session = onnxruntime.InferenceSession(output, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (3, 3, 64, 96), generator=g, dtype=torch.uint8)
    scores = session.run(None, {"image": images.float().numpy()})[0]
    assert scores.shape == (3, 5, 64, 96) and scores.dtype == np.float32
    model.inference_mode = "whole"
    reference = model([{"image": im} for im in images])  # the dataset's vocabulary and seen-class calibration
    for ours, ref in zip(scores, reference):
        assert np.abs(ours - ref["sem_seg"].numpy()).max() <= BOUND
    # a --classes vocabulary: the given order, no calibration (as inference with "class_names")
    load_script("tools/export_model.py").main([
        "--config-file", CONFIGS[method], "--classes", ",".join(names), "--output", output, "--image-size", "64x96",
        "--check-images", "0", *TINY, "DATASETS.TRAIN", f"('{toy_dataset}',)", "MODEL.WEIGHTS", weights])
    open_vocab = onnxruntime.InferenceSession(output, providers=["CPUExecutionProvider"])
    scores = open_vocab.run(None, {"image": images[:1].float().numpy()})[0]
    reference = model([{"image": images[0], "class_names": names}])[0]["sem_seg"].numpy()
    assert scores.shape == (1, 3, 64, 96) and np.abs(scores[0] - reference).max() <= BOUND


def test_ldvc_exports_with_torch_export_and_a_dynamic_batch(toy_dataset, tmp_path):
    """--exporter dynamo (torch.export, dynamic batch axis): LCSA's routed step must not specialise the
    batch (its chunk bounds are per image while exporting) and hands SDPA 4-D tensors; the tool checks
    onnxruntime on a batch of 3 against the traced 2. One LCTD block (of 4 heads): a second adds nothing the
    first does not exercise, and doubles what torch.export and the ONNX optimizer go through (~27 s -> ~16 s)."""
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install -e .[export])")
    one_block = ("MODEL.LDVC.LCTD.NUM_BLOCKS", "1")
    _, weights = _trained_weights(toy_dataset, "LDVC", tmp_path, *one_block)
    diff = load_script("tools/export_model.py").main([
        "--config-file", CONFIGS["LDVC"], "--dataset-classes", toy_dataset, "--output", str(tmp_path / "d.onnx"),
        "--image-size", "64x96", "--exporter", "dynamo", *TINY, "DATASETS.TRAIN", f"('{toy_dataset}',)",
        "MODEL.WEIGHTS", weights, *one_block])
    assert diff <= BOUND


def test_failed_check_writes_nothing(toy_dataset, tmp_path, monkeypatch):
    script = load_script("tools/export_model.py")
    monkeypatch.setattr(script, "onnxruntime_difference", lambda *a, **k: 1.0)
    output = str(tmp_path / "model.onnx")
    with pytest.raises(RuntimeError, match="differs from PyTorch by 1 > --tolerance"):
        script.main(["--config-file", CONFIGS["ZegCLIP"], "--classes", "a,b", "--output", output,
                     "--image-size", "32", *TINY])
    assert os.listdir(tmp_path) == []


def test_cliptrase_is_refused_with_the_reason():
    script = load_script("tools/export_model.py")
    with pytest.raises(ValueError, match="'CLIPtrase' cannot be exported to ONNX: its DBSCAN regions"):
        script.main(["--config-file", "configs/cliptrase/shapes.yaml", "--classes", "a,b", *TINY])
    with pytest.raises(ValueError, match="--image-size takes H or HxW"):
        script.main(["--config-file", CONFIGS["LDVC"], "--classes", "a,b", "--image-size", "64x", *TINY])
