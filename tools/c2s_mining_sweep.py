#!/usr/bin/env python
"""How well C2S's latent-class mining (MODEL.C2S.MERGE_*, CENTER_TOKENS) finds hidden classes, per setting.

    PYTHONPATH=. python tools/c2s_mining_sweep.py --source synthetic
    PYTHONPATH=. python tools/c2s_mining_sweep.py --source shapes --images 12

Sources: "synthetic" draws CLIP-like correlated tokens with planted classes (ldvc_d2.modeling.c2s.synthetic,
three regimes of within/between-class cosine); "shapes" renders shapes-world scenes (3-4 objects, 128 px),
encodes them with the pretrained tiny shapes CLIP (LDVC-Tiny "shapes", 16×16 tokens) and hides the unseen
classes and the background, as a seen-class training label does. Mining sees the hidden tokens only; the
table scores its clusters against the withheld labels (clusters kept, mean size, purity, coverage, recall:
see ``score_mining``), averaged over the images, for every linkage × centring × threshold.
"""
import argparse
import sys
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from tabulate import tabulate

import ldvc_d2  # noqa: F401
from ldvc_d2.modeling.c2s.mining import mine_latent_classes
from ldvc_d2.modeling.c2s.synthetic import correlated_tokens, score_mining

REGIMES = {"0.90/0.80": (0.8, 0.1), "0.86/0.80": (0.8, 0.05), "0.81/0.75": (0.75, 0.05)}
THRESHOLDS = {("single", False): [0.85, 0.9, 0.92, 0.94], ("average", False): [0.8, 0.83, 0.85, 0.9],
              ("single", True): [0.05, 0.1, 0.2, 0.3], ("average", True): [0.0, 0.05, 0.1, 0.2]}


def synthetic_images(num: int, regime: str) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    shared, own = REGIMES[regime]
    for seed in range(num):
        yield correlated_tokens(seed, shared=shared, own=own)


def shapes_images(num: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Tiny-CLIP tokens of rendered scenes; labels at token resolution (nearest), background = 16."""
    from ldvc_d2.benchmarks.shapes.tiny_clip import _normalise
    from ldvc_d2.benchmarks.shapes.world import CLASS_NAMES, IGNORE_LABEL, UNSEEN_CLASSES, render_scene
    from ldvc_d2.modeling.c2s.teacher import CLIPTeacher
    from ldvc_d2.modeling.label_ops import resize_labels_nearest

    teacher = CLIPTeacher("LDVC-Tiny", "shapes", global_size=0, crop_size=64)
    rng = np.random.default_rng(0)
    for _ in range(num):
        ids = rng.choice(len(CLASS_NAMES), size=int(rng.integers(3, 5)), replace=False).tolist()
        ids[0] = int(rng.choice(UNSEEN_CLASSES))  # every image holds an unseen object
        image, label, _ = render_scene(rng, ids, 128)
        dense = teacher.encode(_normalise([image]))["dense"][0]
        labels = torch.from_numpy(label.astype(np.int64))
        labels[labels == IGNORE_LABEL] = len(CLASS_NAMES)
        labels = resize_labels_nearest(labels[None], dense.shape[-2:])[0]
        hidden = torch.isin(labels, torch.tensor(UNSEEN_CLASSES + [len(CLASS_NAMES)]))
        yield dense, labels, hidden


def sweep(images: Sequence[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]], windows: List[int],
          min_tokens: int, max_classes: int) -> List[List]:
    rows = []
    for (linkage, center), thresholds in THRESHOLDS.items():
        for threshold in thresholds:
            scores: Dict[str, List[float]] = {}
            for dense, labels, hidden in images:
                latent = mine_latent_classes(dense, hidden, window_sizes=windows, iters=10, threshold=threshold,
                                             min_tokens=min_tokens, max_classes=max_classes, linkage=linkage,
                                             center=center)
                for k, v in score_mining(latent, labels, hidden).items():
                    scores.setdefault(k, []).append(v)
            mean = {k: sum(v) / len(v) for k, v in scores.items()}
            rows.append([linkage, "yes" if center else "no", threshold, f"{mean['clusters']:.1f}",
                         f"{mean['size']:.0f}", f"{mean['purity']:.2f}", f"{mean['coverage']:.2f}",
                         f"{mean['recall']:.2f}"])
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["synthetic", "shapes"], default="synthetic")
    p.add_argument("--images", type=int, default=6, help="images per regime (default 6)")
    args = p.parse_args(argv)
    headers = ["linkage", "centred", "threshold", "clusters", "size", "purity", "coverage", "recall"]
    if args.source == "synthetic":  # 32x32 tokens, 4 hidden + 2 annotated classes; Base-C2S windows/sizes
        for regime in REGIMES:
            print(f"\nSynthetic tokens, cosine within/between classes {regime} ({args.images} images, 4 hidden "
                  "classes each):")
            rows = sweep(list(synthetic_images(args.images, regime)), [2, 4, 8], 8, 8)
            print(tabulate(rows, headers=headers, tablefmt="pipe"))
    else:  # 16x16 tokens; Base-C2S-Shapes windows/sizes
        print(f"\nShapes tiny CLIP tokens ({args.images} scenes; hidden: unseen objects + background):")
        print(tabulate(sweep(list(shapes_images(args.images)), [2, 4], 4, 4), headers=headers, tablefmt="pipe"))


if __name__ == "__main__":
    sys.exit(main())
