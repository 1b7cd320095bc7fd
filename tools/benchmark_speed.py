#!/usr/bin/env python
"""Speed benchmark: one run prints a table and writes JSON (atomically) with

* train: one training step (losses forward + backward) of LDVC and ZegCLIP at their COCO-Stuff configs,
  random CLIP weights: seconds, peak memory and, from torch.profiler record_function ranges, where the
  time goes (text encoder, prompted ViT forward, head, loss, backward split into ViT and the rest by a
  second profile with the ViT's outputs detached, and the training mapper's data loading per image);
* eval: images/s of LDVC (whole image; sliding window one window per forward; windows batched) and of
  CLIPtrase at its COCO-Stuff config (inference only);
* lcsa: one LCSA layer against global self-attention (SDPA) on 32×32, 64×64, 96×96 token grids
  (d 512, 8 heads, window 4, top-16, batch 1), inference, training (forward + backward) without dropout
  and training with the configs' dropout 0.1 on the attention weights and outputs: seconds
  (the two timed in alternating rounds, so their ratio holds on a shared machine), peak memory, peak
  tensor memory, ratios;
* text: class-embedding time cold (cache cleared) and warm (cached) for 20 and 171 classes.

Times are medians of --repeats calls after a warm-up (ldvc_d2/utils/speed.py), with glibc's malloc in the
state a process reaches once it has freed large blocks, as inside a model (``settle_allocator``; a fresh
process would return a lone layer's memory to the kernel after every call); memory is
CUDA max-allocated on CUDA and the resident-set peak on CPU, and for LCSA also the peak of live tensors
(on CPU from torch.profiler's allocation timeline; on CUDA the max-allocated figure again). CPU defaults are small (--image-size 128,
--batch 2); on CUDA the paper's 512 px crops and 4 images per GPU.

    OMP_NUM_THREADS=1 python tools/benchmark_speed.py --clock cpu --output output/speed_cpu.json
    python tools/benchmark_speed.py --device cuda --output output/speed_cuda.json
"""
import argparse
import os
import statistics
import sys
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ldvc_d2  # noqa: F401,E402
from detectron2.modeling import build_model  # noqa: E402
from ldvc_d2.engine.speed_profile import mapper_seconds, train_breakdown  # noqa: E402
from ldvc_d2.modeling import inference_model  # noqa: E402
from ldvc_d2.modeling.ldvc.lcsa import LocalConsensusSelfAttention  # noqa: E402
from ldvc_d2.predictor import load_config  # noqa: E402
from ldvc_d2.utils.io import write_json_atomic  # noqa: E402
from ldvc_d2.utils.speed import (interleaved_seconds, median_seconds, peak_mib, settle_allocator,  # noqa: E402
                                 tensor_peak_mib)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"ldvc": "configs/coco_stuff.yaml", "zegclip": "configs/zegclip/coco_stuff.yaml",
           "cliptrase": "configs/cliptrase/coco_stuff_224.yaml"}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--image-size", type=int, default=None, help="training crop / eval window in px (CPU 128, CUDA 512)")
    p.add_argument("--batch", type=int, default=None, help="training images per step (CPU 2, CUDA 4)")
    p.add_argument("--clip-model", default="", help="MODEL.CLIP.MODEL override (e.g. LDVC-Tiny for a smoke test)")
    p.add_argument("--methods", default="ldvc,zegclip", help="trained methods for the train section")
    p.add_argument("--grids", default="32,64,96", help="LCSA token grids (side)")
    p.add_argument("--dropout-grids", default="32,64",
                   help="the grids of --grids that also get the training_dropout row (global attention with dropout "
                        "holds heads x L^2 attention weights and their mask: ~6 GiB at 96x96)")
    p.add_argument("--sections", default="train,eval,lcsa,text")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per figure (median)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="cpu: process CPU time (shared CPUs)")
    p.add_argument("--output", default="output/benchmark_speed.json")
    return p.parse_args(argv)


def _config(method: str, args: argparse.Namespace, extra: List[str] = ()):
    model = ["MODEL.CLIP.MODEL", args.clip_model] if args.clip_model else []
    return load_config(os.path.join(REPO, CONFIGS[method]), ["MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE",
                                                            args.device, *model, *extra])


def _model(cfg, train: bool):
    torch.manual_seed(0)
    model = build_model(cfg)
    if not train:  # the evaluated model (C2S: no latent decoder)
        model = inference_model(model)
    return model.train(train)


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def train_section(args, device, notes: List[str]) -> Dict:
    size, out = args.image_size, {}
    for method in args.methods.split(","):
        if method not in ("ldvc", "zegclip"):
            raise SystemExit(f"--methods: '{method}' is not a trained method here; use ldvc and/or zegclip")
        cfg = _config(method, args, ["INPUT.CROP.SIZE", f"({size}, {size})"])
        model = _model(cfg, True)
        classes = len(model.train_class_names)
        gen = torch.Generator().manual_seed(1)
        batch = [{"image": _image(size, size, i), "sem_seg": torch.randint(0, 171, (size, size), generator=gen)}
                 for i in range(args.batch)]

        def step():
            sum(model(batch).values()).backward()
            model.zero_grad(set_to_none=True)

        out[method] = {"image_size": size, "batch": args.batch, "training_classes": classes,
                       "step_s": median_seconds(step, device, args.repeats, args.clock),
                       "peak_mib": peak_mib(step, device),
                       "breakdown_s": train_breakdown(model, step, device, args.repeats)}
        parts = out[method]["breakdown_s"]
        total = sum(parts.values())  # profiled wall time: read the parts as shares where the CPU is shared
        out[method]["breakdown_share"] = {k: v / total if total > 0 else 0.0 for k, v in parts.items()}
        parts["data_loading_per_image"] = mapper_seconds(cfg, args.repeats)
    return out


def eval_section(args, device, notes: List[str]) -> Dict:
    size = args.image_size
    stride = max(1, round(size * 426 / 512))  # the configs' 512 / 426 window / stride, scaled
    images = [{"image": _image(size, 2 * size, 10 + i)} for i in range(2)]
    names = [f"class {i}" for i in range(171)]
    runs = {"ldvc_whole": ("ldvc", ["MODEL.SEGMENTOR.INFERENCE.MODE", "whole"]),
            "ldvc_slide_one_window": ("ldvc", ["MODEL.SEGMENTOR.INFERENCE.WINDOW_BATCH", "1"]),
            "ldvc_slide_batched": ("ldvc", ["MODEL.SEGMENTOR.INFERENCE.WINDOW_BATCH", "8"]),
            "cliptrase": ("cliptrase", [])}
    out = {}
    for key, (method, extra) in runs.items():
        opts = ["MODEL.SEGMENTOR.INFERENCE.CROP_SIZE", str(size), "MODEL.SEGMENTOR.INFERENCE.STRIDE", str(stride)]
        opts = opts if method == "ldvc" else []
        model = _model(_config(method, args, [*opts, *extra]), False)
        for one_by_one in (True, False):
            inputs = [[{**x, "class_names": names}] for x in images] if one_by_one else [
                [{**x, "class_names": names} for x in images]]

            def run():
                with torch.no_grad():
                    for call in inputs:
                        model(call)

            seconds = median_seconds(run, device, args.repeats, args.clock)
            out[f"{key}_{'one_image' if one_by_one else 'image_batch'}"] = {
                "seconds": seconds, "images": len(images), "images_per_s": len(images) / seconds,
                "image_hw": [size, 2 * size]}
    return out


# inference: no_grad, eval mode; training: forward + backward of the output's sum, eval mode (no dropout);
# training_dropout: the same in train mode with the configs' dropout 0.1 on the attention weights and the
# output (MODEL.LDVC.LCTD.ATTN_DROPOUT / DROPOUT, ZegCLIP's decoder values), as LDVC trains
LCSA_MODES = ("inference", "training", "training_dropout")


def lcsa_section(args, device, notes: List[str]) -> Dict:
    """One LCSA layer (top-16) against global self-attention in each of LCSA_MODES: time, peak memory
    (resident set / CUDA) and peak tensor memory."""
    out = {}
    with_dropout = {int(g) for g in args.dropout_grids.split(",") if g.strip()}
    for grid in (int(g) for g in args.grids.split(",")):
        modes = [m for m in LCSA_MODES if m != "training_dropout" or grid in with_dropout]
        out[str(grid)] = {mode: _lcsa_row(grid, mode, device, args) for mode in modes}
    return out


def _lcsa_row(grid: int, mode: str, device: torch.device, args) -> Dict:
    """Global attention and LCSA timed in alternating rounds (``interleaved_seconds``), so the ratio holds
    on a shared machine; then each one's peak memory and peak tensor memory."""
    torch.manual_seed(0)
    train, dropout = mode != "inference", 0.1 if mode == "training_dropout" else 0.0
    x = torch.randn(1, grid * grid, 512, device=device, requires_grad=train)
    runs = {}
    for name, topk in (("global", None), ("lcsa", 16)):
        layer = LocalConsensusSelfAttention(512, num_heads=8, window_size=4, topk=topk, attn_dropout=dropout,
                                            dropout=dropout).to(device).train(bool(dropout))

        def run(layer=layer):
            if train:
                layer(x, grid, grid).sum().backward()
            else:
                with torch.no_grad():
                    layer(x, grid, grid)

        runs[name] = run
    times = interleaved_seconds(list(runs.values()), [device] * len(runs), args.repeats, args.clock)
    row = {}
    for (name, run), seconds in zip(runs.items(), times):
        row[f"{name}_s"] = statistics.median(seconds)
        row[f"{name}_mib"] = peak_mib(run, device)
        row[f"{name}_tensor_mib"] = tensor_peak_mib(run, device)
    row["time_ratio"] = row["lcsa_s"] / row["global_s"]
    for key in ("mib", "tensor_mib"):
        both = row[f"global_{key}"] is not None and row[f"lcsa_{key}"] is not None
        ratio = row[f"lcsa_{key}"] / max(row[f"global_{key}"], 1e-9) if both else None
        row["memory_ratio" if key == "mib" else "tensor_memory_ratio"] = ratio
    return row


def text_section(args, device, notes: List[str]) -> Dict:
    model = _model(_config("ldvc", args), False)
    out = {}
    for count in (20, 171):
        names = [f"class {i}" for i in range(count)]

        def cold():
            model.clear_text_cache()
            model.text_features(names)

        cold_s = median_seconds(cold, device, args.repeats, args.clock)
        warm_s = median_seconds(lambda: model.text_features(names), device, args.repeats, args.clock)
        out[str(count)] = {"cold_s": cold_s, "warm_s": warm_s}
    return out


def table(result: Dict) -> str:
    lines = [f"device {result['device']}, clock {result['clock']}, median of {result['repeats']}, "
             f"CPU allocator: {result.get('allocator', 'as started')}"]
    for method, r in result.get("train", {}).items():
        parts = ", ".join(f"{k} {v * 100:.1f}" for k, v in r["breakdown_share"].items())
        mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f} MiB"
        lines.append(f"train {method} {r['image_size']}px x{r['batch']}: {r['step_s'] * 1000:.0f} ms/step, peak {mem}; "
                     f"% of the profiled step: {parts}; data loading "
                     f"{r['breakdown_s']['data_loading_per_image'] * 1000:.0f} ms/image")
    for key, r in result.get("eval", {}).items():
        lines.append(f"eval {key} {r['image_hw'][0]}x{r['image_hw'][1]}: {r['images_per_s']:.3f} images/s")
    for grid, modes in result.get("lcsa", {}).items():
        for mode, r in modes.items():
            mem = "n/a" if r["memory_ratio"] is None else (f"{r['lcsa_mib']:.1f} / {r['global_mib']:.1f} MiB "
                                                           f"= {r['memory_ratio']:.2f}")
            tensors = "n/a" if r["tensor_memory_ratio"] is None else (
                f"{r['lcsa_tensor_mib']:.1f} / {r['global_tensor_mib']:.1f} MiB = {r['tensor_memory_ratio']:.2f}")
            lines.append(f"lcsa {grid}x{grid} {mode}: {r['lcsa_s'] * 1000:.1f} / {r['global_s'] * 1000:.1f} ms "
                         f"= {r['time_ratio']:.2f}; peak {mem}; tensors {tensors}")
    for count, r in result.get("text", {}).items():
        lines.append(f"text {count} classes: cold {r['cold_s'] * 1000:.1f} ms, warm {r['warm_s'] * 1000:.3f} ms")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.image_size = args.image_size or (512 if cuda else 128)
    args.batch = args.batch or (4 if cuda else 2)
    sections = {"train": train_section, "eval": eval_section, "lcsa": lcsa_section, "text": text_section}
    unknown = set(args.sections.split(",")) - set(sections)
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; choose from {sorted(sections)}")
    result = {"device": str(device), "clock": args.clock, "repeats": args.repeats, "threads": torch.get_num_threads(),
              "image_size": args.image_size, "batch": args.batch, "notes": [],
              "allocator": "glibc heap up to 32 MiB, 64 MiB kept" if settle_allocator() else "as started"}
    for name in args.sections.split(","):
        result[name] = sections[name](args, device, result["notes"])
    print(table(result), flush=True)
    write_json_atomic(args.output, result)
    return result


if __name__ == "__main__":
    main()
