#!/usr/bin/env python
"""Export a trained model for a fixed vocabulary to ONNX: image in, per-class scores out (docs/export.md).

    python tools/export_model.py --config-file configs/voc.yaml --classes "cat,sofa,lamp" \\
        --output output/voc_export/model.onnx MODEL.WEIGHTS output/voc/model_final.pth

The graph (opset --opset, default 17):
  input  "image"  float32 B×3×H×W, RGB, raw pixel values 0-255 (NOT normalised: the config's
                  MODEL.PIXEL_MEAN/PIXEL_STD are part of the graph); H×W fixed (--image-size, default the
                  config's MODEL.SEGMENTOR.INFERENCE.CROP_SIZE square), B any.
  output "scores" float32 B×C×H×W, per-class sigmoid scores at the input size, channels in vocabulary order;
                  the seen-score calibration is subtracted from the dataset's seen classes with
                  --dataset-classes, as in evaluation (none for --classes / --vocabulary-file).
The class embeddings are computed once here and stored in the graph as constants: a new vocabulary needs a
new export. The graph is one whole-input pass of the method (one sliding window of its inference, in
fp32; INFERENCE.PRECISION is not applied): for larger images, run it on the windows of
``ldvc_d2.modeling.windows.slide_boxes`` and average, or resize the image to H×W.

Methods: LDVC and ZegCLIP. CLIPtrase cannot be exported: its DBSCAN regions (scikit-learn) and median
filter (SciPy) run outside PyTorch, on values the graph would have to hand back to Python.
MODEL.WEIGHTS is read with the project's safe loader (ldvc_d2.checkpoint). The file is written under a
temporary name, checked with onnxruntime against the PyTorch model on --check-images random images (max
absolute difference printed; above --tolerance the export fails and nothing is written), then renamed.
Needs the "export" extras: onnx, onnxruntime (and onnxscript for --exporter dynamo).
"""
import argparse
import inspect
import logging
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import ldvc_d2  # noqa: F401  (first: detectron2 0.6 shims, registrations)
from detectron2.modeling import META_ARCH_REGISTRY
from ldvc_d2.data import add_register_argument
from ldvc_d2.modeling.decoder_segmentor import CLIPDecoderSegmentor
from ldvc_d2.predictor import OpenVocabPredictor, add_vocabulary_arguments, load_config, start_tool
from ldvc_d2.utils.io import atomic_path

logger = logging.getLogger("ldvc_d2.export_model")


def check_exportable(arch: type) -> None:
    """Raise, naming the method and why, unless ``arch`` (a meta-architecture class) can be exported."""
    if not issubclass(arch, CLIPDecoderSegmentor):
        why = ("its DBSCAN regions (scikit-learn) and median filter (SciPy) run outside PyTorch"
               if arch.__name__ == "CLIPtrase" else "the exporter covers the CLIP + decoder methods only")
        raise ValueError(f"MODEL.META_ARCHITECTURE '{arch.__name__}' cannot be exported to ONNX: {why}. "
                         "Export LDVC or ZegCLIP.")


class FixedVocabularySegmentor(nn.Module):
    """A :class:`CLIPDecoderSegmentor` with its class embeddings frozen in: raw B×3×H×W RGB 0-255 images ->
    B×C×H×W scores, what the model's whole-image inference returns for each image with this vocabulary."""

    def __init__(self, model: nn.Module, class_names: Sequence[str], seen_classes: Sequence[int] = ()):
        super().__init__()
        check_exportable(type(model))
        self.model = model.eval()
        with torch.no_grad():
            self.register_buffer("text", model.text_features(list(class_names)).detach().clone())
        calibration = torch.zeros(len(class_names))
        calibration[list(seen_classes)] = model.calibration
        self.register_buffer("calibration", calibration.view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        x = self.model._pad((image - self.model.pixel_mean) / self.model.pixel_std, 0.0)
        return self.model.batch_window_scores(x, self.text)[:, :, :h, :w] - self.calibration


def export_onnx(module: nn.Module, path: str, image_size: Sequence[int], *, exporter: str = "torchscript",
                opset: int = 17, check_images: int = 3, tolerance: float = 1e-4) -> float:
    """Write ``module`` (images -> scores) as ONNX to ``path`` atomically, after checking it with onnxruntime
    on ``check_images`` random images (one batch, of another size than the traced example's 2, so the dynamic
    batch axis is checked too). Returns the max
    absolute difference; raises (writing nothing) above ``tolerance``."""
    example = torch.rand(2, 3, *image_size) * 255  # batch 2: torch.export specialises a batch of 1
    # traced with autograd on: under no_grad, torch's MultiheadAttention (CLIP's blocks) takes its fused
    # fast path, which has no ONNX symbolic
    with atomic_path(path) as tmp:
        if exporter == "dynamo":
            torch.onnx.export(module, (example,), tmp, input_names=["image"], output_names=["scores"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                              dynamo=True, external_data=False)
        else:
            extra = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(module, (example,), tmp, input_names=["image"], output_names=["scores"],
                              dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}}, opset_version=opset,
                              **extra)
        if check_images <= 0:
            return float("nan")
        diff = onnxruntime_difference(tmp, module, image_size, check_images)
        print(f"max |onnxruntime - PyTorch| over {check_images} random images: {diff:.3g} (tolerance {tolerance:g})")
        if not diff <= tolerance:
            raise RuntimeError(f"The ONNX model differs from PyTorch by {diff:.3g} > --tolerance {tolerance:g}; "
                               f"'{path}' was not written.")
    return diff


def onnxruntime_difference(path: str, module: nn.Module, image_size: Sequence[int], num_images: int,
                           seed: int = 0) -> float:
    """Max |onnxruntime(path) - module| on ``num_images`` random 0-255 images, run as one batch."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("Checking the export needs onnxruntime: pip install -e .[export] (or pass "
                          "--check-images 0 to skip the check).") from None
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, *image_size), generator=g).float()
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    ours = session.run(None, {"image": images.numpy()})[0]
    with torch.no_grad():
        reference = module(images).numpy()
    if ours.shape != reference.shape:
        raise RuntimeError(f"ONNX output shape {ours.shape} != PyTorch's {reference.shape}.")
    return float(np.abs(ours - reference).max())


def parse_image_size(text: str) -> Tuple[int, int]:
    """"512" -> (512, 512); "512x683" -> (512, 683)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--image-size takes H or HxW in positive pixels, e.g. 512 or 512x683; got '{text}'.")
    return int(parts[0]), int(parts[-1])


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    add_vocabulary_arguments(parser)
    parser.add_argument("--output", default="output/export/model.onnx", help="ONNX file to write")
    parser.add_argument("--image-size", metavar="H[xW]",
                        help="the graph's input size, e.g. 512 or 512x683 (default: the square "
                             "MODEL.SEGMENTOR.INFERENCE.CROP_SIZE)")
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                        help="torch.onnx.export's TorchScript tracer (default; LDVC and ZegCLIP) or torch.export "
                             "(dynamo=True; LDVC and ZegCLIP)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--check-images", type=int, default=3, help="random images of the onnxruntime check (0: skip)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted max |onnxruntime - PyTorch|")
    add_register_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..., e.g. MODEL.WEIGHTS")
    return parser


def main(argv: Optional[List[str]] = None) -> float:
    args = get_parser().parse_args(argv)
    names, seen, _ = start_tool(args)
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"  # the export traces on the CPU; the ONNX file runs anywhere
    size = parse_image_size(args.image_size or str(cfg.MODEL.SEGMENTOR.INFERENCE.CROP_SIZE))
    check_exportable(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE))  # before building (and downloading) CLIP
    module = FixedVocabularySegmentor(OpenVocabPredictor(cfg).model, names, seen).eval()
    diff = export_onnx(module, args.output, size, exporter=args.exporter, opset=args.opset,
                       check_images=args.check_images, tolerance=args.tolerance)
    logger.info(f"Wrote {args.output}: {cfg.MODEL.META_ARCHITECTURE}, {len(names)} classes, input Bx3x{size[0]}x"
                f"{size[1]} float32 RGB 0-255, output Bx{len(names)}x{size[0]}x{size[1]} scores.")
    return diff


if __name__ == "__main__":
    try:
        main()
    except (ValueError, RuntimeError, ImportError, FileNotFoundError) as e:
        sys.exit(f"export_model.py: {e}")
