#!/usr/bin/env python
"""Recall of DeOP's mask proposals (supplement Table 8) for a trained proposal network.

    python tools/proposal_recall.py --config-file configs/deop/proposals_coco_stuff_class_agnostic.yaml \\
        MODEL.WEIGHTS output/deop/proposals_coco_stuff_class_agnostic/model_final.pth
    python tools/proposal_recall.py --config-file configs/deop/coco_stuff.yaml \\
        MODEL.DEOP.PROPOSAL_WEIGHTS output/deop/proposals_coco_stuff/model_final.pth --max-images 500

Any config whose model holds a proposal network works: a stage-2 config (DeOPProposals, weights from
MODEL.WEIGHTS) or a stage-3 DeOP config with PROPOSALS "maskformer" (weights from MODEL.DEOP.PROPOSAL_WEIGHTS,
or a stage-3 MODEL.WEIGHTS). Each image of the dataset (DATASETS.TEST[0], or --dataset) is read by the
test mapper (short side INPUT.MIN_SIZE_TEST, the whole image in one pass); its proposals are compared with
the full ground truth, unseen classes included: a segment (one class's pixels in one image, ignore pixels
excluded) is recalled at threshold t when a proposal (σ > 0.5) reaches IoU ≥ t with it
(:mod:`ldvc_d2.modeling.deop.proposals.recall`). Prints Recall@30/@50 over all / seen / unseen segments
beside the paper's COCO-Stuff figures, and writes them as JSON (--output).
"""
import argparse
import logging
import sys
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

import ldvc_d2  # noqa: F401  (first: detectron2 0.6 shims, registrations)
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from ldvc_d2 import add_ldvc_config
from ldvc_d2.checkpoint import Checkpointer
from ldvc_d2.config import load_config_file, merge_overrides, validate_config
from ldvc_d2.data import LDVCTestMapper, add_register_argument, load_user_modules
from ldvc_d2.modeling.deop.proposals import proposal_recall, segment_best_iou
from ldvc_d2.modeling.deop.weights import read_oracle_label
from ldvc_d2.utils import write_json_atomic

logger = logging.getLogger("ldvc_d2.proposal_recall")
THRESHOLDS = (0.3, 0.5)
# DeOP supplement Table 8 (COCO-Stuff 156/15, the paper's class-agnostic proposal network)
PAPER = {"Recall@30": {"all": 0.59, "seen": 0.57, "unseen": 0.71}, "Recall@50": {"all": 0.45, "seen": 0.44, "unseen": 0.56}}


def image_best_ious(model: torch.nn.Module, inputs: Dict) -> Dict[int, float]:
    """One test-mapper input -> {class id: best proposal IoU of its segment} on the image's own grid."""
    image = inputs["image"]
    h, w = image.shape[-2:]
    logits = model.proposal_net(model.preprocess(image))  # 1×N×H'/4×W'/4 on the padded image
    padded = model._padded_size(h, w)
    logits = F.interpolate(logits.float(), size=padded, mode="bilinear", align_corners=False)[0, :, :h, :w]
    return segment_best_iou(logits, read_oracle_label(inputs, model.ignore_label).to(logits.device), model.ignore_label)


def recall_table(best: Sequence[Dict[int, float]], seen: Sequence[int], unseen: Sequence[int]) -> Dict[str, Dict]:
    """{"Recall@30": {"all", "seen", "unseen"}, "Recall@50": ...} plus the segment counts under "segments"."""
    table = {f"Recall@{round(t * 100)}": {"all": proposal_recall(best, t),
                                          "seen": proposal_recall(best, t, classes=seen),
                                          "unseen": proposal_recall(best, t, classes=unseen)} for t in THRESHOLDS}
    table["segments"] = {"all": sum(len(b) for b in best),
                         "seen": sum(c in seen for b in best for c in b),
                         "unseen": sum(c in unseen for b in best for c in b)}
    return table


def format_table(table: Dict[str, Dict], dataset: str, images: int) -> str:
    seg = table["segments"]
    lines = [f"Proposal recall on {dataset}: {images} images, {seg['all']} segments ({seg['seen']} seen, "
             f"{seg['unseen']} unseen)",
             f"{'':<10} {'all':>6} {'seen':>6} {'unseen':>6}   paper Table 8 (COCO-Stuff): all / seen / unseen"]
    for key in PAPER:
        ours, paper = table[key], PAPER[key]
        lines.append(f"{key:<10} {ours['all']:>6.3f} {ours['seen']:>6.3f} {ours['unseen']:>6.3f}   "
                     f"{paper['all']:.2f} / {paper['seen']:.2f} / {paper['unseen']:.2f}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a DeOP stage-2 (proposals_*) or stage-3 config")
    parser.add_argument("--dataset", default="", help="registered dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--max-images", type=int, default=0, help="evaluate the first N images only (0 = all)")
    parser.add_argument("--output", default="", help="write the figures as JSON here")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="run without MODEL.WEIGHTS / PROPOSAL_WEIGHTS (random network: checks the command only)")
    add_register_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    setup_logger(name="ldvc_d2")
    if args.register:
        load_user_modules(args.register)
    cfg = get_cfg()
    add_ldvc_config(cfg)
    load_config_file(cfg, args.config_file)
    merge_overrides(cfg, args.opts)
    validate_config(cfg, training=False)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    trained = cfg.MODEL.WEIGHTS or (cfg.MODEL.META_ARCHITECTURE == "DeOP" and cfg.MODEL.DEOP.PROPOSAL_WEIGHTS)
    if not trained and not args.allow_untrained:
        raise SystemExit(f"{args.config_file}: no trained proposal network; give MODEL.WEIGHTS (a stage-2 "
                         "model_final.pth) or, with a stage-3 config, MODEL.DEOP.PROPOSAL_WEIGHTS.")
    model = build_model(cfg)
    if getattr(model, "proposal_net", None) is None:
        raise SystemExit(f"{args.config_file}: {cfg.MODEL.META_ARCHITECTURE} has no proposal network (MODEL.META_ARCHITECTURE "
                         "'DeOPProposals', or 'DeOP' with MODEL.DEOP.PROPOSALS 'maskformer').")
    if cfg.MODEL.WEIGHTS:
        Checkpointer(model, partial_load=cfg.MODEL.WEIGHTS_PARTIAL_LOAD).load(cfg.MODEL.WEIGHTS)
    model.eval()
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "")
    if not dataset:
        raise SystemExit("No dataset: set DATASETS.TEST or --dataset.")
    meta = MetadataCatalog.get(dataset)
    seen, unseen = list(meta.get("seen_classes", [])), list(meta.get("unseen_classes", []))
    loader = build_detection_test_loader(cfg, dataset, mapper=LDVCTestMapper(cfg, dataset))
    best = []
    with torch.no_grad():
        for batch in loader:
            best += [image_best_ious(model, inputs) for inputs in batch]
            if args.max_images and len(best) >= args.max_images:
                best = best[:args.max_images]
                break
    table = recall_table(best, seen, unseen)
    print(format_table(table, dataset, len(best)))
    result = {"dataset": dataset, "images": len(best), "config": args.config_file,
              "weights": cfg.MODEL.WEIGHTS or cfg.MODEL.DEOP.PROPOSAL_WEIGHTS, **table, "paper_table8": PAPER}
    if args.output:
        write_json_atomic(args.output, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
