#!/usr/bin/env python
"""Parameters, FLOPs, throughput and peak memory of any method's configs, in the Detectron2 tools style.

    python tools/analyze_model.py --config-file configs/demo.yaml
    python tools/analyze_model.py --config-file configs/voc.yaml --config-file configs/zegclip/voc.yaml \\
        --components model backbone --input-size 512 --output output/analysis.json

Tasks (--tasks, default: all three):
  parameter  trainable and total parameters per module (module names cut to --depth dotted parts).
  flop       fvcore FlopCountAnalysis of one eval-mode forward of a random --input-size image (one
             multiply-add counts as one flop, as in the FLOPs tables of ZegCLIP and Mask2Former);
             attention ops fvcore does not know are counted by handles here, element-wise ops are
             not counted (listed under "uncounted_ops" in the JSON).
  speed      images/s (median seconds per image) over --iters images after --warmup images, and peak
             memory: the module's weights plus the most one more image adds (on a GPU
             torch.cuda.max_memory_allocated, on the CPU the process's peak resident set, Linux VmHWM,
             each above what was in use before the image). All measured models are timed in turn,
             image by image, so on a shared machine they share its load; --clock cpu counts the
             process's CPU time instead of the wall clock (with OMP_NUM_THREADS=1, what an idle core
             would take). The last column gives each row's warm images/s relative to the first row's.
FLOPs and speed are measured with the text-feature cache cold (class embeddings recomputed for
every image, the cost of a new vocabulary) and warm (embeddings cached, the cost of every further
image with the same vocabulary). The vocabulary is the first test dataset's classes, or
--num-classes generic names.

Components (--components): "model" is the whole inference (prompted CLIP image and text encoders,
head, upsampling to the input size, sigmoid); "backbone" is the prompted image encoder plus the
text encoder alone. Every component of every --config-file (repeat the flag) is measured in one
run, e.g. LDVC vs the ZegCLIP head vs the backbone alone. By default the model makes one whole-image
pass (the FLOPs-table convention); --slide keeps the config's sliding-window protocol for "model".
CLIP weights do not change any figure, so CLIP is built with random weights (no download) unless
--load-weights is given (C2S students too: MODEL.C2S.STUDENT_WEIGHTS is ignored without it); MODEL.WEIGHTS is not loaded.
"""
import argparse
import logging
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import ldvc_d2  # noqa: F401  (first: detectron2 0.6 shims, registrations)
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from ldvc_d2.data import add_register_argument, load_user_modules
from ldvc_d2.modeling import inference_model
from ldvc_d2.predictor import load_config
from ldvc_d2.utils import write_json_atomic
from ldvc_d2.utils.model_stats import count_flops, parameter_table
from ldvc_d2.utils.speed import interleaved_speed, settle_allocator
from tabulate import tabulate

logger = logging.getLogger("ldvc_d2.analyze_model")
TASKS = ("parameter", "flop", "speed")
COMPONENTS = ("model", "backbone")


# ---------------------------------------------------------------------------------------------- what runs
class ModelInference(nn.Module):
    """One image through the model's own inference: ``model([{"image", "class_names"}])``."""

    def __init__(self, model: nn.Module, class_names: Sequence[str], cold: bool):
        super().__init__()
        self.model, self.class_names, self.cold = model, list(class_names), cold

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.cold:
            self.model.clear_text_cache()
        return self.model([{"image": image, "class_names": self.class_names}])[0]["sem_seg"]


class BackboneInference(nn.Module):
    """The prompted image encoder on one whole image, plus the text encoder on the vocabulary when
    cold (warm: embeddings computed once beforehand)."""

    def __init__(self, model: nn.Module, class_names: Sequence[str], cold: bool):
        super().__init__()
        self.model, self.class_names, self.cold = model, list(class_names), cold
        with torch.no_grad():
            self.text = None if cold else model.backbone.encode_text(self.class_names)  # computed once

    def forward(self, image: torch.Tensor):
        x = self.model.preprocess(image)  # as the segmentor pads a window
        dense = self.model.backbone(x)["dense"]
        if not self.cold:
            return dense  # (dense, self.text): the cached embeddings are a constant, not an output
        return dense, self.model.backbone.encode_text(self.class_names)


# ---------------------------------------------------------------------------------------------- driver
def vocabulary(cfg, num_classes: Optional[int]) -> List[str]:
    if num_classes:
        return [f"class {i}" for i in range(num_classes)]
    if cfg.DATASETS.TEST:
        names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("stuff_classes", None)
        if names:
            return list(names)
    raise ValueError("No class list: DATASETS.TEST[0] is not a registered dataset with stuff_classes; "
                     "pass --num-classes N.")


def analyze_config(config_file: str, args: argparse.Namespace, timed: List[Tuple]) -> List[Dict[str, object]]:
    """Every requested component of one config -> one result dict each. What the speed task times is
    appended to ``timed`` as (result, state, runner, image, device), timed by :func:`time_models`."""
    cfg = load_config(config_file, args.opts)
    if not args.load_weights:
        cfg.MODEL.CLIP.PRETRAINED = ""
        if cfg.MODEL.META_ARCHITECTURE == "C2S":  # student weights change no figure either
            cfg.MODEL.C2S.STUDENT_WEIGHTS = ""
    if not args.slide:
        cfg.MODEL.SEGMENTOR.INFERENCE.MODE = "whole"
    names = vocabulary(cfg, args.num_classes)
    torch.manual_seed(0)
    model = build_model(cfg)
    model = inference_model(model).eval()  # what is evaluated
    device = torch.device(cfg.MODEL.DEVICE)
    height, width = args.input_size if len(args.input_size) == 2 else args.input_size * 2
    image = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    inference = cfg.MODEL.SEGMENTOR.INFERENCE
    results = []
    for component in args.components:
        if component == "backbone" and not hasattr(model, "backbone"):
            raise ValueError(f"{config_file}: {cfg.MODEL.META_ARCHITECTURE} has no CLIP backbone module to measure on "
                             "its own; use --components model.")
        module = model if component == "model" else model.backbone
        result: Dict[str, object] = OrderedDict(
            config=config_file, component=component, method=cfg.MODEL.META_ARCHITECTURE,
            head=cfg.MODEL.SEM_SEG_HEAD.NAME if hasattr(model, "sem_seg_head") else None, clip=cfg.MODEL.CLIP.MODEL,
            device=str(device), num_classes=len(names), input_size=[height, width],
            inference=(f"sliding window {inference.CROP_SIZE} stride {inference.STRIDE}"
                       if component == "model" and inference.MODE == "slide" else "one whole-image pass"),
        )
        wrapper = ModelInference if component == "model" else BackboneInference
        if "parameter" in args.tasks:
            table = parameter_table(module, args.depth, prefix="" if component == "model" else "backbone")
            result["parameters"] = {"trainable": sum(r["trainable"] for r in table.values()),
                                    "total": sum(r["total"] for r in table.values()), "modules": table}
        if "flop" in args.tasks:
            flops = {}
            for state in ("cold", "warm"):
                runner = wrapper(model, names, cold=state == "cold")
                if state == "warm" and component == "model":
                    runner(image)  # fill the text cache
                flops[state] = count_flops(runner, image, args.depth)
            result["flops"] = flops
        if "speed" in args.tasks and args.iters > 0:
            weights = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
            result["speed"] = {"iters": args.iters, "warmup": args.warmup, "clock": args.clock,
                               "weights_mb": weights / 2 ** 20}
            timed.extend((result, state, wrapper(model, names, cold=state == "cold"), image, device)
                         for state in ("cold", "warm"))
        results.append(result)
    return results


def time_models(timed: Sequence[Tuple], args: argparse.Namespace) -> None:
    """The speed task of every model and state at once, image by image in turn (:func:`interleaved_speed`)."""
    if not timed:
        return
    runs = [(runner, image, device) for _, _, runner, image, device in timed]
    for (result, state, *_), speed in zip(timed, interleaved_speed(runs, iters=args.iters, warmup=args.warmup,
                                                                     clock=args.clock)):
        added = speed["added_memory_mb"]
        speed["peak_memory_mb"] = None if added is None else result["speed"]["weights_mb"] + added
        result["speed"][state] = speed


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def print_report(results: Sequence[Dict[str, object]]) -> None:
    for r in results:
        header = (f"{r['config']} [{r['component']}]: head {r['head']}, CLIP {r['clip']}, {r['num_classes']} classes, "
                  f"input {r['input_size'][0]}x{r['input_size'][1]}, {r['inference']}, {r['device']}")
        print(header)
        if "parameters" in r:
            rows = [[k, f"{v['trainable']:,}", f"{v['total']:,}"] for k, v in r["parameters"]["modules"].items()]
            p = r["parameters"]
            rows.append(["TOTAL", f"{p['trainable']:,} ({_m(p['trainable'])})", f"{p['total']:,} ({_m(p['total'])})"])
            print(tabulate(rows, headers=["module", "trainable", "total"], tablefmt="pipe",
                           colalign=("left", "right", "right")))
        if "flops" in r:
            parts = ", ".join(f"{k} {v / 1e9:.3f}" for k, v in r["flops"]["cold"]["by_module"].items() if k.count(".") <= 1)
            print(f"GFLOPs by module (cache cold): {parts}")
        print()
    rows = []
    first = next((r["speed"]["warm"]["images_per_s"] for r in results if "speed" in r), None)
    for r in results:
        p, f, s = r.get("parameters"), r.get("flops"), r.get("speed")
        rows.append([
            r["config"], r["component"],
            _m(p["trainable"]) if p else "-", _m(p["total"]) if p else "-",
            f"{f['cold']['total'] / 1e9:.3f}" if f else "-", f"{f['warm']['total'] / 1e9:.3f}" if f else "-",
            f"{s['cold']['images_per_s']:.2f}" if s else "-", f"{s['warm']['images_per_s']:.2f}" if s else "-",
            *(f"{s[state]['peak_memory_mb']:.0f}" if s and s[state]["peak_memory_mb"] is not None else "-"
              for state in ("cold", "warm")),
            f"{s['warm']['images_per_s'] / first:.2f}" if s else "-",
        ])
    print(tabulate(rows, tablefmt="pipe", headers=[
        "config", "component", "trainable", "total", "GFLOPs cold", "GFLOPs warm", "img/s cold", "img/s warm",
        "peak MiB cold", "peak MiB warm", "warm ÷ row 1"]))
    clocks = {s["warm"]["clock"] for s in (r.get("speed") for r in results) if s}
    for clock in clocks:
        print("img/s: median seconds per image, models timed in turn; clock: "
              + ("process CPU time" if clock == "cpu" else "wall"))
    kinds = {s["cold"]["memory_kind"] for s in (r.get("speed") for r in results) if s}
    for kind in kinds:
        print(f"peak MiB: the measured module's weights + the most one image adds ({kind})")
    if any("flops" in r for r in results):
        print("GFLOPs: fvcore, one multiply-add = one flop; cold = class embeddings recomputed, warm = cached")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", action="append", required=True, metavar="FILE",
                        help="config to analyse; repeat the flag to compare several in one run")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="what to measure (default: all)")
    parser.add_argument("--components", nargs="+", choices=COMPONENTS, default=["model"],
                        help="model: the whole inference; backbone: image + text encoders alone (default: model)")
    parser.add_argument("--input-size", nargs="+", type=int, default=[512], metavar="N",
                        help="input image size: S (S x S) or H W (default 512)")
    parser.add_argument("--num-classes", type=int, help="vocabulary size (default: the test dataset's classes)")
    parser.add_argument("--iters", type=int, default=10, help="timed images per measurement (0: no timing)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed images before each measurement")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="speed: wall clock, or the process's CPU time (shared machines; use OMP_NUM_THREADS=1)")
    parser.add_argument("--slide", action="store_true", help="model: the config's sliding-window inference "
                                                             "instead of one whole-image pass")
    parser.add_argument("--depth", type=int, default=2, help="module-name depth of the per-module rows (default 2)")
    parser.add_argument("--load-weights", action="store_true", help="build CLIP with MODEL.CLIP.PRETRAINED")
    parser.add_argument("--output", "--json", dest="output", metavar="FILE", help="also write the results as JSON")
    add_register_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every config, KEY VALUE ...")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    if len(args.input_size) not in (1, 2) or min(args.input_size) < 1:
        raise SystemExit(f"--input-size takes S or H W (positive), got {args.input_size}.")
    setup_logger(name="ldvc_d2")
    load_user_modules(args.register)
    settle_allocator()  # glibc's malloc in one stated state for every model (ldvc_d2/utils/speed.py)
    timed: List[Tuple] = []
    results = [r for config_file in args.config_file for r in analyze_config(config_file, args, timed)]
    time_models(timed, args)
    print_report(results)
    if args.output:
        write_json_atomic(args.output, {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                                        "tasks": args.tasks, "results": results})
        print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
