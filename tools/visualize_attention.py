#!/usr/bin/env python
"""Cross-attention maps between image features and class embeddings (LDVC Figs. 1 and 5).

    python tools/visualize_attention.py --config-file configs/demo.yaml --input image.png \\
        --classes "plain red shape,striped blue shape" --output out/attention.png \\
        --opts MODEL.WEIGHTS output/demo/model_final.pth

For one image and a class list, the grid shows, per class, where the image tokens attend to that
class in the cross-attention (eq. 6) of the last decoder block (--block to choose another): the
head-averaged attention weights, queries = image tokens, keys = classes, so at every pixel the
maps of all classes sum to 1. When the head has LCSA, the grid has two blocks of panels, LCSA on
(routing to the top-m windows) and off (global self-attention), with the same weights: only the
attention routing changes. The image is resized as in testing and passed once, whole.

A method without a decoder head draws its own stages instead, when it has ``stage_maps(image,
class_names)``: CLIPtrase shows its per-pixel patch-text probabilities and its scores after the
region vote, side by side.

Any semantic head whose ``forward(features, text, return_attention=True)`` returns
``(logits, [B×C×h×w per layer])`` works: LCTDHead, and ZegCLIPHead, whose maps are its layers'
head-averaged attention logits of the class queries over the image (its mask predictions; the
colour scale then spans their range).
"""
import argparse
import contextlib
import inspect
import logging
import os
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import ldvc_d2  # noqa: F401  (first: detectron2 0.6 shims, registrations)
from detectron2.data.detection_utils import read_image
from ldvc_d2.data import add_register_argument
from ldvc_d2.modeling.ldvc import LocalConsensusSelfAttention
from ldvc_d2.predictor import OpenVocabPredictor, add_vocabulary_arguments, load_config, start_tool
from ldvc_d2.utils import write_png_atomic
from ldvc_d2.utils.visualization import draw_map_grid

logger = logging.getLogger("ldvc_d2.visualize_attention")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example:\n" + __doc__.split("\n\n")[1])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True, metavar="IMAGE", help="one image file")
    parser.add_argument("--output", required=True, metavar="FILE_OR_DIR",
                        help="PNG file, or a folder (then <folder>/<image stem>_attention.png)")
    add_vocabulary_arguments(parser)
    parser.add_argument("--block", type=int, default=-1, help="decoder block/layer to show (default -1: the last)")
    parser.add_argument("--self-attention", choices=["both", "lcsa", "global"], default="both",
                        help="with an LCSA head: LCSA on and off (both), or one of them")
    parser.add_argument("--columns", type=int, default=6, help="panels per line of the grid")
    parser.add_argument("--vmax", type=float, help="top of the colour scale (default: the largest weight shown)")
    add_register_argument(parser)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. --opts MODEL.WEIGHTS output/demo/model_final.pth")
    return parser


def supports_attention(head: torch.nn.Module) -> bool:
    return "return_attention" in inspect.signature(head.forward).parameters


@torch.no_grad()
def attention_maps(model: torch.nn.Module, image: torch.Tensor, class_names: Sequence[str]) -> List[torch.Tensor]:
    """Cross-attention maps of every decoder block for one image: a list of C×H×W tensors.

    ``image``: 3×H×W uint8 in the model's input format, already resized. The steps are the model's
    own for one whole-image window (ZeroShotSegmentor.preprocess, window_scores): normalise, pad to the patch × window
    multiple, backbone, class embeddings (cached), head; the maps are upsampled by the patch size
    like the logits and the padding is cut off.
    """
    head = getattr(model, "sem_seg_head", None)
    if head is None:
        raise TypeError(f"{type(model).__name__} has no decoder head, so there are no cross-attention maps to draw; "
                        "this tool draws the maps of LDVC's LCTDHead and ZegCLIP's head.")
    if not supports_attention(head):
        raise TypeError(f"The semantic head {type(head).__name__} has no 'return_attention' argument: it cannot "
                        "return attention maps. Heads that do: LCTDHead (and the ZegCLIP-style baseline head).")
    h, w = image.shape[-2:]
    padded = model.preprocess(image)
    features = model.backbone(padded)
    _, attentions = head(features, model.text_features(list(class_names)), return_attention=True)
    stride = model.backbone.size_divisibility
    return [F.interpolate(a.float(), scale_factor=stride, mode="bilinear", align_corners=False)[0, :, :h, :w]
            for a in attentions]


@contextlib.contextmanager
def lcsa_routing(model: torch.nn.Module, topk: Optional[int]) -> Iterator[None]:
    """Temporarily set every LCSA module's top-m (None = global self-attention); same weights."""
    modules = [m for m in model.modules() if isinstance(m, LocalConsensusSelfAttention)]
    saved = [m.topk for m in modules]
    for m in modules:
        m.topk = topk
    try:
        yield
    finally:
        for m, k in zip(modules, saved):
            m.topk = k


def attention_blocks(model: torch.nn.Module, image: torch.Tensor, class_names: Sequence[str], *, block: int,
                     mode: str, topk: int) -> List[Tuple[str, torch.Tensor]]:
    """[(label, C×H×W maps of decoder block ``block``)] for LCSA on/off (heads with LCSA) or as built."""
    def maps() -> torch.Tensor:
        per_block = attention_maps(model, image, class_names)
        if not -len(per_block) <= block < len(per_block):
            raise ValueError(f"--block {block}: the head has {len(per_block)} blocks "
                             f"(use 0..{len(per_block) - 1} or -1).")
        return per_block[block]

    if not hasattr(model, "sem_seg_head") and hasattr(model, "stage_maps"):
        return model.stage_maps(image, list(class_names))
    has_lcsa = any(isinstance(m, LocalConsensusSelfAttention) for m in model.modules())
    if not has_lcsa:
        return [(type(model.sem_seg_head).__name__, maps())]
    out = []
    if mode in ("both", "lcsa"):
        with lcsa_routing(model, topk):
            out.append((f"LCSA on (top-{topk} windows)", maps()))
    if mode in ("both", "global"):
        with lcsa_routing(model, None):
            out.append(("LCSA off (global self-attention)", maps()))
    return out


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    names, _, _ = start_tool(args)
    cfg = load_config(args.config_file, args.opts)
    predictor = OpenVocabPredictor(cfg, input_format="RGB")
    model = predictor.model
    try:
        rgb = read_image(args.input, format="RGB")
    except Exception as e:  # PIL raises several types for unreadable files
        raise ValueError(f"Cannot read image '{args.input}' ({type(e).__name__}: {e}).") from e
    resized = predictor.resize.get_transform(rgb).apply_image(rgb)
    model_input = resized[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else resized
    image = torch.as_tensor(np.ascontiguousarray(model_input.transpose(2, 0, 1)))
    blocks = attention_blocks(model, image, names, block=args.block, mode=args.self_attention,
                              topk=cfg.MODEL.LDVC.LCTD.TOPK_WINDOWS)
    output = args.output
    if os.path.isdir(output) or output.endswith(os.sep):
        output = os.path.join(output, os.path.splitext(os.path.basename(args.input))[0] + "_attention.png")
    stacked = torch.stack([m for _, m in blocks])
    softmax = bool((stacked >= 0).all()) and torch.allclose(stacked.sum(dim=1), torch.ones(()), atol=1e-4)
    vmin = 0.0 if softmax or stacked.min() >= 0 else float(stacked.min())
    vmax = args.vmax or float(stacked.max())
    where = "last block" if args.block == -1 else f"block {args.block}"
    source = type(getattr(model, "sem_seg_head", model)).__name__
    what = ("cross-attention image tokens -> classes, heads averaged, sums to 1 over classes" if softmax
            else f"attention maps as {source} returns them")
    if not hasattr(model, "sem_seg_head"):
        what, where = f"{source}'s class probabilities per stage", "whole image"
    grid = draw_map_grid(resized, [(label, m.cpu().numpy()) for label, m in blocks], names, columns=args.columns,
                         vmin=vmin, vmax=vmax, title=f"{os.path.basename(args.input)}: {what} ({where})",
                         colorbar_label=("probability" if not hasattr(model, "sem_seg_head")
                                         else "attention weight" if softmax else "attention"))
    write_png_atomic(output, grid)
    logger.info(f"Wrote '{output}' ({len(blocks)} block(s) x {len(names)} classes).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
