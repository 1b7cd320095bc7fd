#!/usr/bin/env python
"""Pretrain the shapes world's tiny CLIP afresh, compare it with the one shipped in the package, and
(for maintainers) ship a checkpoint.

The quick start and every shapes config (``MODEL.CLIP.PRETRAINED "shapes"``) use the checkpoint
cached under ``$DETECTRON2_DATASETS/shapes_zs_clip/``; on a fresh machine it is written from the file
shipped in ``ldvc_d2/benchmarks/shapes/assets/`` (ldvc_d2/benchmarks/shapes/shipped.py). This script
reproduces its pretraining:

    python tools/pretrain_tiny_clip.py --output x.pt      # pretrain into x.pt and compare; the cache untouched
    python tools/pretrain_tiny_clip.py --force            # pretrain into the cache, replacing what is there
                                                          # (later runs use it instead of the shipped one)
    python tools/pretrain_tiny_clip.py --from x.pt --ship # maintainers: write x.pt as the shipped file

Pretraining is deterministic for a given machine, thread count and library versions; elsewhere the
zero-shot accuracy moves by about a point and LDVC's shapes figures within their seed spread
(docs/shapes_benchmark.md).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="shapes", help="a MODEL.CLIP.PRETRAINED tag of LDVC-Tiny")
    parser.add_argument("--cache-dir", default=None, help="default: $DETECTRON2_DATASETS/shapes_zs_clip")
    parser.add_argument("--output", default=None, help="pretrain into this file instead of the cache")
    parser.add_argument("--force", action="store_true", help="replace an existing cached checkpoint")
    parser.add_argument("--from", dest="source", default=None,
                        help="an existing pretrained checkpoint of the recipe (no pretraining)")
    parser.add_argument("--ship", action="store_true",
                        help="write the checkpoint as the package's shipped file (ldvc_d2/benchmarks/shapes/assets/)")
    args = parser.parse_args(argv)

    from ldvc_d2.benchmarks.shapes import cache, tiny_clip
    from ldvc_d2.benchmarks.shapes import shipped as shipped_files

    if args.recipe not in tiny_clip.TINY_CLIP_RECIPES:
        parser.error(f"--recipe: unknown tag {args.recipe!r}; known: {sorted(tiny_clip.TINY_CLIP_RECIPES)}")
    cfg = tiny_clip.TINY_CLIP_RECIPES[args.recipe]
    if args.source:
        if args.output or args.force or args.cache_dir:
            parser.error("--from names an existing checkpoint: it does not pretrain, so --output, --force and "
                         "--cache-dir do not apply")
        if not os.path.isfile(args.source):
            parser.error(f"--from: no file {args.source}")
        path = args.source
    else:
        path = args.output or cache.cache_path(args.cache_dir, cfg)
        if os.path.exists(path) and not args.force:
            parser.error(f"{path} exists; --force replaces it (or --output elsewhere)")
        tiny_clip.pretrain_tiny_clip(path, cfg)

    import torch

    metrics = torch.load(path, map_location="cpu", weights_only=True).get("ldvc_tiny_clip", {})
    rows = [("this checkpoint", metrics, path)]
    shipped = shipped_files.shipped_path(cfg)
    if shipped.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(shipped), "pt") as f:
                rows.append(("shipped", json.loads(f.metadata()["metrics"]), str(shipped)))
        except Exception as e:  # a damaged file: say so, and let --ship replace it
            print(f"The shipped file {shipped} cannot be read ({type(e).__name__}: {e}).")
    print(f"Recipe {args.recipe!r} ({cfg.digest()}): zero-shot accuracy on held-out shapes, %")
    for name, m, where in rows:
        print(f"  {name:16s} all {m.get('accuracy', float('nan')):5.1f}  seen {m.get('accuracy_seen', float('nan')):5.1f}"
              f"  unseen {m.get('accuracy_unseen', float('nan')):5.1f}  ({where})")
    if args.ship:
        meta = shipped_files.write_shipped(path, str(shipped), cfg)
        print(f"Shipped: {shipped} ({os.path.getsize(shipped) / 2**20:.1f} MiB, token embedding "
              f"{meta['token_embedding_sha256'][:12]})")
        for stale in shipped_files.stale_shipped_files():  # older digests of the recipes: not packaged twice
            stale.unlink()
            print(f"Removed {stale} (no recipe of this version has its digest)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
