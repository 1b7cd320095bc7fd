#!/usr/bin/env python
"""The shapes zero-shot benchmark: several methods, same split and budget, several seeds, one table.

    python tools/benchmark_shapes.py                       # 3 seeds: 4 trained methods + 3 training-free rows
    python tools/benchmark_shapes.py --seeds 0 1 2 3 4 --variants ldvc no_language
    python tools/benchmark_shapes.py --variants ldvc_vj_none ldvc_vj_lnpost ldvc_vj_learnable ldvc_vj_l2 \
        --seeds 0 1 2 --jobs 12 --output output/shapes_vj     # the V_j-scale choices, 12 runs at once

Each run is `train_net.py --config-file configs/shapes/<variant>.yaml SEED <seed>` in its own
process (the data and the tiny CLIP are prepared once, before any run). ``--jobs N`` runs N of them at
once, each single-threaded (OMP_NUM_THREADS=1 etc.; a run's last digits can differ from a
multi-threaded run of the same seed, so compare variants within one invocation). The table gives mean
± standard deviation over seeds of pAcc, mIoU(S), mIoU(U) and hIoU, and is written with every run's
metrics to ``<output>/benchmark.json`` and as a bar chart ``<output>/benchmark.png``.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Dict, List, Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {  # name -> (config, description)
    "ldvc": ("configs/shapes/ldvc.yaml", "LDVC (VLPT + LCTD)"),
    "demo": ("configs/demo.yaml", "LDVC, the quick start's schedule (400 x 4 images, lr 2e-3)"),
    "zegclip": ("configs/shapes/zegclip.yaml", "ZegCLIP-style head + prompts"),
    "no_language": ("configs/shapes/no_language.yaml", "no language (floor)"),
    "frozen_clip": ("configs/shapes/frozen_clip.yaml", "frozen CLIP, no prompts"),
    "ldvc_vj_none": ("configs/shapes/ldvc_vj_none.yaml", "LDVC, V_j raw (INTERMEDIATE_NORM none)"),
    "ldvc_vj_lnpost": ("configs/shapes/ldvc_vj_lnpost.yaml", "LDVC, V_j through CLIP's ln_post"),
    "ldvc_vj_learnable": ("configs/shapes/ldvc_vj_learnable.yaml", "LDVC, V_j through a learnable LayerNorm"),
    "ldvc_vj_l2": ("configs/shapes/ldvc_vj_l2.yaml", "LDVC, V_j L2-normalised per token"),
    "ldvc_scale_head_dim": ("configs/shapes/ldvc_scale_head_dim.yaml", "LDVC, LCSA scale 1/sqrt(head_dim)"),
    # C2S (seed 003) Table 3 in miniature: tiny SegFormer from scratch, the shapes CLIP as teacher (docs/c2s.md)
    "c2s_seen_only": ("configs/c2s/shapes_seen_only.yaml", "C2S student, seen-only CE + NEL"),
    "c2s_distill": ("configs/c2s/shapes_distill.yaml", "C2S student + global/local distillation"),
    "c2s": ("configs/c2s/shapes.yaml", "C2S student + distillation + latent embeddings"),
    # DeOP (seed 004, docs/deop.md): CAL + prompts trained on ORACLE ground-truth segments (diagnostic, leaks
    # unseen extents) or on training-free CLIP-cluster proposals; LDVC with patch severance (GPS α=1, last block)
    "deop_oracle": ("configs/deop/shapes_oracle.yaml", "DeOP, ORACLE GT-segment proposals (diagnostic)"),
    "deop_clusters": ("configs/deop/shapes_clusters.yaml", "DeOP, CLIP-cluster proposals"),
    "ldvc_gps": ("configs/shapes/ldvc_gps.yaml", "LDVC + patch severance (GPS, last block)"),
    # training-free rows: evaluated only (--eval-only), the same for every seed
    "cliptrase": ("configs/cliptrase/shapes.yaml", "CLIPtrase (training-free)"),
    "plain_clip": ("configs/cliptrase/shapes_clip.yaml", "plain CLIP patch-text (training-free)"),
    "maskclip": ("configs/maskclip/shapes.yaml", "MaskCLIP, harness form (training-free)"),
    "sclip": ("configs/sclip/shapes.yaml", "SCLIP, correlative self-attention (training-free)"),
    "clearclip": ("configs/clearclip/shapes.yaml", "ClearCLIP, q-q attention, no residual/FFN (training-free)"),
    "naclip": ("configs/naclip/shapes.yaml", "NACLIP, neighbourhood k-k attention (training-free)"),
    "proxyclip": ("configs/proxyclip/shapes.yaml", "ProxyCLIP, CLIP-key proxy (training-free)"),
}
TRAINING_FREE = ("cliptrase", "sclip", "plain_clip", "maskclip", "clearclip", "naclip", "proxyclip")
DEFAULT_VARIANTS = ["ldvc", "zegclip", "no_language", "frozen_clip", "cliptrase", "sclip", "plain_clip"]
SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
METRICS = ("pAcc", "mIoU(S)", "mIoU(U)", "hIoU")


def run_one(variant: str, seed: int, out_dir: str, opts: List[str], env: Optional[Dict[str, str]] = None
            ) -> Dict[str, float]:
    """One train_net.py run (skipped if its metrics exist); ``env``: extra environment variables."""
    config = os.path.join(REPO, VARIANTS[variant][0])
    run_dir = os.path.join(out_dir, f"{variant}_seed{seed}")
    metrics_file = os.path.join(run_dir, "inference", "shapes_zs_val", "sem_seg_metrics.json")
    if not os.path.isfile(metrics_file):
        cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config,
               *(["--eval-only"] if variant in TRAINING_FREE else []), "SEED", str(seed), "OUTPUT_DIR", run_dir, *opts]
        with open(os.path.join(out_dir, f"{variant}_seed{seed}.log"), "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, env={**os.environ, **(env or {})})
    with open(metrics_file) as f:
        return json.load(f)["metrics"]


def summarise(runs: Dict[str, List[Dict[str, float]]]) -> Dict[str, Dict[str, List[float]]]:
    """{variant: {metric: [mean, std]}} over seeds (population std)."""
    return {v: {m: [float(np.mean([r[m] for r in rs])), float(np.std([r[m] for r in rs]))] for m in METRICS}
            for v, rs in runs.items()}


def plot(summary, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ldvc_d2.utils import atomic_path

    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(summary)
    for i, (variant, stats) in enumerate(summary.items()):
        xs = np.arange(len(METRICS)) + i * width
        ax.bar(xs, [stats[m][0] for m in METRICS], width, yerr=[stats[m][1] for m in METRICS], capsize=3,
               label=VARIANTS[variant][1])
    ax.set_xticks(np.arange(len(METRICS)) + 0.4 - width / 2, METRICS)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--output", default="output/shapes_benchmark")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once; with N > 1 each run is single-threaded (OMP_NUM_THREADS=1)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)

    if args.jobs < 1:
        parser.error("--jobs must be >= 1")

    import ldvc_d2  # noqa: F401
    from ldvc_d2.benchmarks.shapes.cache import ensure_tiny_clip
    from ldvc_d2.benchmarks.shapes.dataset import generate_shapes_dataset
    from ldvc_d2.utils import write_json_atomic

    import torch

    generate_shapes_dataset(os.environ.get("DETECTRON2_DATASETS", "datasets"))  # once, not once per run
    clip_metrics = torch.load(ensure_tiny_clip(), map_location="cpu", weights_only=True)["ldvc_tiny_clip"]
    pairs = [(v, s) for v in args.variants for s in args.seeds]
    results: Dict[tuple, Dict[str, float]] = {}
    env = SINGLE_THREAD if args.jobs > 1 else None
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # threads only wait on the run processes
        futures = {pool.submit(run_one, v, s, args.output, args.opts, env): (v, s) for v, s in pairs}
        for i, future in enumerate(as_completed(futures)):
            variant, seed = futures[future]
            results[(variant, seed)] = future.result()
            done = time.perf_counter() - start
            print(f"[{i + 1}/{len(pairs)}] {variant} seed {seed}: "
                  + ", ".join(f"{m} {results[(variant, seed)][m]:.1f}" for m in METRICS)
                  + f"  (elapsed {done / 60:.1f} min)", flush=True)
    runs = {v: [results[(v, s)] for s in args.seeds] for v in args.variants}

    summary = summarise(runs)
    title = (f"shapes benchmark, {len(args.seeds)} seeds; tiny CLIP zero-shot accuracy "
             f"{clip_metrics['accuracy']:.1f}% (chance {clip_metrics['chance']:.1f}%)")
    print("\n" + title)
    print(f"| method | {' | '.join(METRICS)} |\n|---|" + "---|" * len(METRICS))
    for variant, stats in summary.items():
        print(f"| {VARIANTS[variant][1]} | " + " | ".join(f"{stats[m][0]:.1f} ± {stats[m][1]:.1f}" for m in METRICS) + " |")
    result = {"seeds": args.seeds, "tiny_clip": clip_metrics, "summary": summary, "runs": runs,
              "configs": {v: VARIANTS[v][0] for v in args.variants}, "overrides": args.opts,
              "jobs": args.jobs}
    write_json_atomic(os.path.join(args.output, "benchmark.json"), result)
    plot(summary, os.path.join(args.output, "benchmark.png"), title)
    print(f"Wrote {args.output}/benchmark.json and benchmark.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
