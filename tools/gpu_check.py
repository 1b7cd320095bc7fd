#!/usr/bin/env python
"""One prepared GPU check: every trainable method trains and evaluates in fp32, fp16 and bf16, CLIPtrase at
336 px, the ONNX export, and tools/benchmark_speed.py (LCSA vs global attention at 32²-96² included).

    python tools/gpu_check.py --output output/gpu_check            # on a GPU (make gpu-check), < 8 min
    python tools/gpu_check.py --dry-run --output output/gpu_dry    # the same code on the CPU, tiny, seconds

Checks (each one's failure is recorded and the others still run; the exit status is 1 if any failed):
  train_<method>_<precision>  --steps optimizer steps of LDVC, ZegCLIP, DeOP (ground-truth proposals) and C2S
        on their shapes configs with a random --clip-model (ViT-B/16 on the GPU; C2S with its SegFormer-B4
        student), --image-size crops, 2 images per step; fp32, fp16 with the GradScaler, bf16 autocast
        (ldvc_d2.engine.train_loop.AccumulatingTrainer): seconds per step, the losses (finite?), peak memory.
  eval_<method>_<precision>   one whole-image inference of the trained model at MODEL.SEGMENTOR.INFERENCE.PRECISION
        on a --image-size x 2·--image-size image: seconds, scores finite and in [0, 1].
  cliptrase_336               CLIPtrase's COCO-Stuff 336 px config (random weights), one 336x448 image.
  onnx_export                 LDVC exported by tools/export_model.py's export_onnx and run by onnxruntime on
        CUDA where its CUDA provider is installed (else on the CPU): max |onnxruntime - PyTorch|.
  benchmark_speed             tools/benchmark_speed.py on --device (all sections; LCSA vs global time and
        peak memory, CUDA max_memory_allocated, at 32, 64, 96 token grids).
Peak memory is torch.cuda.max_memory_allocated (reset per check) on CUDA, null on the CPU. Writes
<output>/gpu_check.json, <output>/gpu_check.md (a table of the checks) and <output>/benchmark_speed.json.
--dry-run: CPU, the tiny random CLIP "LDVC-Tiny", 32 px, one step, benchmark_speed's LCSA section at grid 8
only; tests/test_gpu_check.py runs it.
"""
import argparse
import importlib.util
import math
import os
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ldvc_d2  # noqa: F401,E402  (first: detectron2 0.6 shims, registrations)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from ldvc_d2.engine.train_loop import AccumulatingTrainer  # noqa: E402
from ldvc_d2.predictor import load_config  # noqa: E402
from ldvc_d2.utils.io import write_json_atomic  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "gpu_check_toy"
CLASSES = ["red circle", "green square", "blue star", "yellow triangle", "red square"]  # seen 0, 1, 3
METHODS = {"ldvc": ("configs/shapes/ldvc.yaml", []), "zegclip": ("configs/shapes/zegclip.yaml", []),
           "deop": ("configs/deop/shapes_oracle.yaml", []),
           "c2s": ("configs/c2s/shapes.yaml", ["MODEL.C2S.MERGE_THRESHOLD", "0.5", "MODEL.C2S.MIN_CLUSTER", "2"])}
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/gpu_check", help="folder for gpu_check.json / .md")
    p.add_argument("--device", default="cuda")
    p.add_argument("--clip-model", default="ViT-B-16", help="random CLIP tower of the method checks")
    p.add_argument("--image-size", type=int, default=320, help="training crop and eval height in px")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per method and precision")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--skip", default="", help="comma-separated check groups to skip: train, cliptrase, onnx, speed")
    p.add_argument("--dry-run", action="store_true", help="CPU, LDVC-Tiny, 32 px, 1 step: the same code in seconds")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.clip_model, args.image_size, args.steps = "cpu", "LDVC-Tiny", 32, 1
    return args


def _register_dataset() -> None:
    if DATASET not in DatasetCatalog.list():
        DatasetCatalog.register(DATASET, lambda: [])
        MetadataCatalog.get(DATASET).set(stuff_classes=CLASSES, seen_classes=[0, 1, 3], unseen_classes=[2, 4],
                                         ignore_label=255, evaluator_type="zero_shot_sem_seg")


def _cfg(method: str, args: argparse.Namespace, *extra: str):
    config, opts = METHODS[method]
    student = ["MODEL.C2S.STUDENT", "segformer_b4"] if method == "c2s" and not args.dry_run else []
    return load_config(os.path.join(REPO, config), [
        "MODEL.CLIP.MODEL", args.clip_model, "MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE", args.device,
        "DATASETS.TRAIN", f"('{DATASET}',)", "DATASETS.TEST", f"('{DATASET}',)", *opts, *student, *extra])


def _images(n: int, h: int, w: int, seed: int, device: torch.device) -> List[Dict[str, torch.Tensor]]:
    """Random uint8 images with labels of the 5 toy classes, the top half unseen class 2."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.randint(0, 5, (h, w), generator=g)
        label[: h // 2] = 2
        out.append({"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                    "sem_seg": label, "height": h, "width": w})
    return out


class _Stream:
    """The same micro-batch every step, in the shape AccumulatingTrainer reads."""
    seed, start_iter = 0, 0

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        while True:
            yield [self.batch]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Dict], device: torch.device) -> Dict:
    """fn's result dict plus seconds and peak memory (CUDA max_memory_allocated, MiB; None on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    result["seconds"] = time.perf_counter() - start
    result["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return result


def train_and_eval(method: str, precision: str, args, device: torch.device, checks: Dict) -> None:
    """--steps steps of ``method`` at ``precision`` (fp16 with the GradScaler), then one inference at
    MODEL.SEGMENTOR.INFERENCE.PRECISION ``precision`` with the trained weights."""
    torch.manual_seed(0)
    model = build_model(_cfg(method, args)).train()
    size = args.image_size

    def train() -> Dict:
        params = [p for p in model.parameters() if p.requires_grad]
        trainer = AccumulatingTrainer(model, _Stream(_images(2, size, size, 0, device)),
                                      torch.optim.AdamW(params, lr=1e-4), amp_dtype=PRECISIONS[precision])
        losses = []
        with EventStorage(0) as storage:
            for it in range(args.steps):
                trainer.iter = storage.iter = it
                trainer.run_step()
                losses.append(storage.history("total_loss").latest())
        if not all(math.isfinite(x) for x in losses):
            raise FloatingPointError(f"non-finite training loss {losses}")
        return {"losses": losses, "grad_scaler": trainer.grad_scaler is not None}

    checks[f"train_{method}_{precision}"] = _run(train, device, per=args.steps)
    state = model.state_dict()
    evaluator = build_model(_cfg(method, args, "MODEL.SEGMENTOR.INFERENCE.MODE", "whole",
                                 "MODEL.SEGMENTOR.INFERENCE.PRECISION", precision)).eval()
    evaluator.load_state_dict(state)
    image = _images(1, size, 2 * size, 1, device)
    if method != "deop":  # DeOP's ground-truth proposals read the label; the others get the image only
        image = [{k: v for k, v in x.items() if k != "sem_seg"} for x in image]

    def evaluate() -> Dict:
        with torch.no_grad():
            scores = evaluator(image)[0]["sem_seg"]
        ok = bool(torch.isfinite(scores).all()) and 0 <= float(scores.min()) and float(scores.max()) <= 1
        if not ok or tuple(scores.shape[-2:]) != (size, 2 * size):
            raise FloatingPointError(f"scores of shape {tuple(scores.shape)} not finite in [0, 1]")
        return {"scores_shape": list(scores.shape), "dtype": str(scores.dtype)}

    checks[f"eval_{method}_{precision}"] = _run(evaluate, device)


def cliptrase_336(args, device: torch.device) -> Dict:
    cfg = load_config(os.path.join(REPO, "configs/cliptrase/coco_stuff_336.yaml"), [
        "MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE", args.device,
        *(["MODEL.CLIP.MODEL", args.clip_model] if args.dry_run else [])])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    h, w = (336, 448) if not args.dry_run else (48, 64)
    image = _images(1, h, w, 2, device)[0]["image"]
    with torch.no_grad():
        scores = model([{"image": image, "class_names": CLASSES}])[0]["sem_seg"]
    if not torch.isfinite(scores).all():
        raise FloatingPointError("non-finite CLIPtrase scores")
    return {"image_hw": [h, w], "scores_shape": list(scores.shape)}


def _tool(name: str):
    """tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def onnx_export(args, device: torch.device) -> Dict:
    """LDVC exported on the CPU (as tools/export_model.py does), run by onnxruntime on CUDA if it can."""
    import onnxruntime

    export = _tool("export_model")
    cfg = _cfg("ldvc", argparse.Namespace(**{**vars(args), "device": "cpu"}))
    torch.manual_seed(0)
    module = export.FixedVocabularySegmentor(build_model(cfg), CLASSES).eval()
    size = [64, 64] if args.dry_run else [224, 224]
    path = os.path.join(args.output, "ldvc.onnx")
    export.export_onnx(module, path, size, check_images=0)
    providers = (["CUDAExecutionProvider"] if device.type == "cuda" and "CUDAExecutionProvider" in
                 onnxruntime.get_available_providers() else []) + ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(path, providers=providers)
    images = torch.randint(0, 256, (2, 3, *size), generator=torch.Generator().manual_seed(3)).float()
    ours = torch.from_numpy(session.run(None, {"image": images.numpy()})[0])
    with torch.no_grad():
        diff = float((ours - module(images)).abs().max())
    os.remove(path)
    if not diff <= 1e-3:
        raise RuntimeError(f"onnxruntime differs from PyTorch by {diff:.3g}")
    return {"providers": session.get_providers(), "max_abs_difference": diff, "image_hw": size}


def benchmark_speed(args) -> Dict:
    out = os.path.join(args.output, "benchmark_speed.json")
    flags = ["--device", args.device, "--output", out]
    if args.dry_run:
        # its own sections are tested in tests/test_benchmark_speed.py; here the call and the LCSA rows
        flags += ["--clip-model", "LDVC-Tiny", "--image-size", "32", "--batch", "1", "--repeats", "1", "--grids", "8",
                  "--dropout-grids", "8", "--sections", "lcsa"]
    else:
        flags += ["--dropout-grids", "32,64,96"]  # GPU memory allows global attention with dropout at 96x96 too
    result = _tool("benchmark_speed").main(flags)
    return {"output": out, "lcsa": result.get("lcsa", {})}


def _run(fn: Callable[[], Dict], device: torch.device, per: int = 1) -> Dict:
    try:
        result = _timed(fn, device)
        result["status"] = "ok"
        result["seconds_each"] = result["seconds"] / per
    except Exception as e:  # one check's failure is a result; the others still run
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    return result


def markdown(result: Dict) -> str:
    lines = [f"GPU check on {result['device']} ({result['device_name']}), CLIP {result['clip_model']}, "
             f"{result['image_size']} px, torch {result['torch']}", "",
             "| check | status | seconds (each) | peak MiB | details |", "|---|---|---|---|---|"]
    for name, r in result["checks"].items():
        if r["status"] != "ok":
            lines.append(f"| {name} | FAILED | | | {r['error'][:200]} |")
            continue
        extra = {k: v for k, v in r.items() if k not in ("status", "seconds", "seconds_each", "peak_mib", "lcsa")}
        mib = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(f"| {name} | ok | {r['seconds_each']:.3f} | {mib} | {extra} |")
    for grid, modes in result["checks"].get("benchmark_speed", {}).get("lcsa", {}).items():
        for mode, r in modes.items():
            mem = "" if r.get("memory_ratio") is None else f", memory {r['memory_ratio']:.2f}"
            lines.append(f"| lcsa {grid}x{grid} {mode} | ok | {r['lcsa_s']:.4f} / {r['global_s']:.4f} = "
                         f"{r['time_ratio']:.2f} | | LCSA / global time{mem} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: no CUDA device here; run it on a GPU machine, or --dry-run on the CPU.")
    os.makedirs(args.output, exist_ok=True)
    _register_dataset()
    skip = set(filter(None, args.skip.split(",")))
    checks: Dict[str, Dict] = {}
    if "train" not in skip:
        for method in args.methods.split(","):
            for precision in PRECISIONS:
                train_and_eval(method, precision, args, device, checks)
    if "cliptrase" not in skip:
        checks["cliptrase_336"] = _run(lambda: cliptrase_336(args, device), device)
    if "onnx" not in skip:
        checks["onnx_export"] = _run(lambda: onnx_export(args, device), device)
    if "speed" not in skip:
        checks["benchmark_speed"] = _run(lambda: benchmark_speed(args), device)
    result = {"device": str(device), "dry_run": args.dry_run, "clip_model": args.clip_model, "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
              "image_size": args.image_size, "steps": args.steps, "checks": checks}
    write_json_atomic(os.path.join(args.output, "gpu_check.json"), result)
    table = markdown(result)
    tmp = os.path.join(args.output, "gpu_check.md.tmp")
    with open(tmp, "w") as f:
        f.write(table)
    os.replace(tmp, os.path.join(args.output, "gpu_check.md"))
    print(table)
    failed = [name for name, r in checks.items() if r["status"] != "ok"]
    for name in failed:
        print(f"FAILED {name}:\n{checks[name]['traceback']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
