#!/usr/bin/env python
"""Parameter counts of an LDVC config, per module: what trains and what is frozen CLIP.

    python tools/analyze_model.py --config-file configs/coco_stuff.yaml
    python tools/analyze_model.py --config-file configs/voc.yaml --json output/voc_params.json

The CLIP weights do not change the counts, so by default the model is built with random CLIP
weights (no download, works offline); ``--load-weights`` builds it with MODEL.LDVC.CLIP_PRETRAINED.
"""
import argparse
import json
import os
import sys
from collections import OrderedDict
from typing import Dict

import ldvc_d2  # noqa: F401  (first: detectron2 0.6 shims)
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from ldvc_d2 import add_ldvc_config
from tabulate import tabulate
from torch import nn


def parameter_table(model: nn.Module, depth: int = 3) -> "OrderedDict[str, Dict[str, int]]":
    """{module name truncated to ``depth`` dotted parts: {"trainable": n, "total": n}}."""
    table: "OrderedDict[str, Dict[str, int]]" = OrderedDict()
    for name, p in model.named_parameters():
        key = ".".join(name.split(".")[:depth])
        row = table.setdefault(key, {"trainable": 0, "total": 0})
        row["total"] += p.numel()
        row["trainable"] += p.numel() if p.requires_grad else 0
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--depth", type=int, default=3, help="module-name depth of the table rows")
    parser.add_argument("--load-weights", action="store_true", help="build CLIP with its pretrained weights")
    parser.add_argument("--json", help="also write the counts to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args(argv)

    cfg = get_cfg()
    add_ldvc_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    if not args.load_weights:
        cfg.MODEL.LDVC.CLIP_PRETRAINED = ""
    model = build_model(cfg)
    table = parameter_table(model, args.depth)
    trainable = sum(r["trainable"] for r in table.values())
    total = sum(r["total"] for r in table.values())
    rows = [[k, f"{r['trainable']:,}", f"{r['total']:,}"] for k, r in table.items() if r["total"]]
    rows.append(["TOTAL", f"{trainable:,} ({trainable / 1e6:.2f}M)", f"{total:,} ({total / 1e6:.2f}M)"])
    print(f"{args.config_file}: CLIP {cfg.MODEL.LDVC.CLIP_MODEL}, {cfg.MODEL.LDVC.VISUAL_PROMPTS} visual / "
          f"{cfg.MODEL.LDVC.TEXT_PROMPTS} text prompts, {cfg.MODEL.LCTD.NUM_BLOCKS} LCTD blocks")
    print(tabulate(rows, headers=["module", "trainable", "total"], tablefmt="pipe", colalign=("left", "right", "right")))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"config": args.config_file, "trainable": trainable, "total": total, "modules": table}, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
