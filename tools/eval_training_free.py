#!/usr/bin/env python
"""Evaluate a training-free method on the eight benchmarks of the training-free papers, one table.

    python tools/eval_training_free.py --method sclip
    python tools/eval_training_free.py --method naclip --benchmarks voc21 cityscapes MODEL.DEVICE cuda
    python tools/eval_training_free.py --configs a=configs/x/voc21.yaml b=configs/y/voc21.yaml --output out/cmp

With ``--method M`` the configs are ``configs/M/<benchmark>.yaml`` for the benchmarks voc21, context60,
coco_object, voc20, context59, coco_stuff, cityscapes, ade150 (the papers' column order: VOC21, PC60,
Object, VOC20, PC59, Stuff, City, ADE); ``--configs`` names config files instead (``NAME=PATH``, or
PATH named by its file stem). Each is evaluated by ``train_net.py --eval-only`` in its own process
(log: ``<output>/<name>.log``), in order, with progress and an estimate of the time left; a benchmark
whose dataset is not prepared is skipped with the message that names its prepare command, a failed
run is reported with the end of its log. Results already in ``<output>/<name>/`` are reused unless
``--rerun``. Trailing ``KEY VALUE`` pairs override every config.

Writes ``<output>/table.md`` and ``<output>/table.json``: mIoU (%) per benchmark, the average over
the benchmarks evaluated (how many of how many), and each benchmark's dataset, image count, mIoU
rule and protocol line (as the evaluator wrote them next to the metrics). Exit status 1 when a run
failed, else 0.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS: Tuple[Tuple[str, str], ...] = (  # config stem, the papers' column name
    ("voc21", "VOC21"), ("context60", "PC60"), ("coco_object", "Object"), ("voc20", "VOC20"),
    ("context59", "PC59"), ("coco_stuff", "Stuff"), ("cityscapes", "City"), ("ade150", "ADE"),
)
_LABELS = dict(BENCHMARKS)
_LOG_TAIL = 2000
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")  # e.g. MODEL.DEVICE


@dataclass
class Run:
    """One benchmark: its name, config, and what became of it."""

    name: str
    config: str
    dataset: str = ""
    num_images: Optional[int] = None
    status: str = "pending"  # evaluated | reused | skipped | failed
    message: str = ""
    seconds: float = 0.0
    result: Dict[str, object] = field(default_factory=dict)


def resolve_runs(method: Optional[str], benchmarks: Optional[Sequence[str]], configs: Optional[Sequence[str]]
                 ) -> List[Run]:
    """The runs of ``--method`` (configs/<method>/<benchmark>.yaml) or of ``--configs`` (NAME=PATH or PATH)."""
    if configs:
        runs = []
        for item in configs:
            name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
            runs.append(Run(name or os.path.splitext(os.path.basename(path))[0], path))
    else:
        folder = os.path.join(REPO, "configs", method)
        if not os.path.isdir(folder):
            known = sorted(d for d in os.listdir(os.path.join(REPO, "configs"))
                           if os.path.isfile(os.path.join(REPO, "configs", d, "voc21.yaml")))
            raise ValueError(f"--method {method}: no folder configs/{method}/ (methods with benchmark configs: "
                             f"{', '.join(known) or 'none'}).")
        runs = [Run(b, os.path.join(folder, f"{b}.yaml")) for b in (benchmarks or _LABELS)]
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"benchmark names {duplicates} appear twice; name them NAME=PATH in --configs.")
    missing = [r.config for r in runs if not os.path.isfile(r.config)]
    if missing:
        raise ValueError(f"config files not found: {', '.join(missing)}")
    return runs


def config_dataset(config: str, opts: Sequence[str]) -> str:
    """The one DATASETS.TEST entry of ``config`` with ``opts`` applied (an error otherwise)."""
    from detectron2.config import get_cfg

    from ldvc_d2 import add_ldvc_config
    from ldvc_d2.config import load_config_file, merge_overrides

    cfg = get_cfg()
    add_ldvc_config(cfg)
    load_config_file(cfg, config)
    merge_overrides(cfg, opts)
    if len(cfg.DATASETS.TEST) != 1:
        raise ValueError(f"'{config}': a benchmark config evaluates one dataset, DATASETS.TEST is "
                         f"{list(cfg.DATASETS.TEST)}.")
    return cfg.DATASETS.TEST[0]


def check_dataset_ready(run: Run) -> None:
    """Count the images of ``run.dataset``; a missing dataset marks the run skipped, with the message
    that names the folder and the prepare command."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if run.dataset not in DatasetCatalog.list():
        raise ValueError(f"'{run.config}': DATASETS.TEST names '{run.dataset}', which is not registered "
                         "(your own datasets: --register FILE).")
    try:
        run.num_images = len(DatasetCatalog.get(run.dataset))
    except FileNotFoundError as e:
        command = MetadataCatalog.get(run.dataset).get("prepare_command", None)
        hint = f" (prepare it with `{command}`)" if command and command not in str(e) else ""
        run.status, run.message = "skipped", f"dataset not ready: {e}{hint}"


def evaluate(run: Run, output: str, opts: Sequence[str], register: Sequence[str], rerun: bool) -> None:
    """``train_net.py --eval-only`` for one run; fills ``run.result`` from its sem_seg_metrics.json."""
    out_dir = os.path.join(output, run.name)
    metrics_file = os.path.join(out_dir, "inference", run.dataset, "sem_seg_metrics.json")
    log_file = os.path.join(output, f"{run.name}.log")
    run.status = "reused" if os.path.isfile(metrics_file) and not rerun else "evaluated"
    if run.status == "evaluated":
        if os.path.isfile(metrics_file):
            os.remove(metrics_file)  # a failed re-run must not leave the old numbers in the table
        cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", run.config, "--eval-only",
               *[a for path in register for a in ("--register", path)], "OUTPUT_DIR", out_dir, *opts]
        start = time.perf_counter()
        with open(log_file, "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
        run.seconds = time.perf_counter() - start
        if proc.returncode != 0 or not os.path.isfile(metrics_file):
            with open(log_file) as log:
                tail = log.read()[-_LOG_TAIL:]
            run.status, run.message = "failed", f"train_net.py exited with {proc.returncode}; end of {log_file}:\n{tail}"
            return
    with open(metrics_file) as f:
        report = json.load(f)
    run.result = {"mIoU": report["metrics"]["mIoU"], "num_images": report["num_images"],
                  "protocol": report.get("protocol", ""), "miou_rule": report.get("miou_rule", ""),
                  "metrics_file": metrics_file}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def eta_line(runs: Sequence[Run], index: int) -> str:
    """Estimated time for the runs after ``index``: seconds per image of the runs evaluated so far."""
    done = [r for r in runs[: index + 1] if r.status == "evaluated" and r.num_images]
    left = [r for r in runs[index + 1:] if r.status == "pending" and r.num_images]
    if not left:
        return "none left"
    if not done:
        return f"{len(left)} left"
    per_image = sum(r.seconds for r in done) / sum(r.num_images for r in done)
    images = sum(r.num_images for r in left)
    return f"{len(left)} left ({images:,} images), about {_minutes(per_image * images)} at {per_image:.2f} s per image"


def tables(title: str, runs: Sequence[Run]) -> Tuple[str, Dict[str, object]]:
    """(markdown, JSON-able dict) of the runs: one mIoU row, the average, one detail line per run."""
    scored = [r for r in runs if r.result and r.result["mIoU"] is not None]
    average = sum(r.result["mIoU"] for r in scored) / len(scored) if scored else None
    label = {r.name: _LABELS.get(r.name, r.name) for r in runs}
    cells = [f"{r.result['mIoU']:.1f}" if r in scored else "–" for r in runs]
    avg = f"{average:.1f} ({len(scored)} of {len(runs)})" if scored else "–"
    lines = [f"# {title}", "", "| | " + " | ".join(label[r.name] for r in runs) + " | Avg |",
             "|---|" + "---|" * (len(runs) + 1), "| mIoU (%) | " + " | ".join(cells) + f" | {avg} |", "",
             "| benchmark | dataset | images | mIoU | mIoU rule | protocol |", "|---|---|---|---|---|---|"]
    for r in runs:
        if r.result:
            miou = "–" if r.result["mIoU"] is None else f"{r.result['mIoU']:.2f}"
            lines.append(f"| {label[r.name]} | {r.dataset} | {r.result['num_images']} | {miou} | "
                         f"{r.result['miou_rule']} | {r.result['protocol']} |")
        else:
            reason = r.message.splitlines()[0] if r.message else r.status
            lines.append(f"| {label[r.name]} | {r.dataset} | – | {r.status} | | {reason} |")
    data = {"title": title, "average_miou": average, "num_evaluated": len(scored), "num_benchmarks": len(runs),
            "benchmarks": [{"name": r.name, "label": label[r.name], "config": r.config, "dataset": r.dataset,
                            "status": r.status, "message": r.message, "seconds": round(r.seconds, 1),
                            **r.result} for r in runs]}
    return "\n".join(lines) + "\n", data


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--method", help="evaluate configs/METHOD/<benchmark>.yaml")
    which.add_argument("--configs", nargs="+", metavar="[NAME=]PATH", help="evaluate these config files instead")
    parser.add_argument("--benchmarks", nargs="+", metavar="NAME",
                        help=f"with --method: only these ({', '.join(_LABELS)})")
    parser.add_argument("--output", help="folder for the runs and the table (default output/training_free/METHOD)")
    parser.add_argument("--register", action="append", default=[], metavar="FILE",
                        help="Python file registering datasets of your own, passed on to every run")
    parser.add_argument("--rerun", action="store_true", help="evaluate again where results exist")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every run")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line; KEY VALUE overrides written right after --configs / --benchmarks go to ``opts``."""
    parser = get_parser()
    args = parser.parse_args(argv)
    # trailing KEY VALUE overrides right after a list option end up in that list: move them back
    for option, belongs in (("configs", lambda c: c.endswith((".yaml", ".yml"))), ("benchmarks", _LABELS.__contains__)):
        items = getattr(args, option) or []
        first_other = next((i for i, item in enumerate(items) if not belongs(item)), len(items))
        if first_other < len(items) and (first_other == 0 or not _CONFIG_KEY.match(items[first_other])):
            what = "a config file (.yaml)" if option == "configs" else f"a benchmark ({', '.join(_LABELS)})"
            parser.error(f"--{option}: {items[first_other]!r} is not {what}")
        setattr(args, option, items[:first_other] or None)
        args.opts = items[first_other:] + args.opts
    if args.configs and args.benchmarks:
        parser.error("--benchmarks selects among --method's configs; with --configs list only the ones to run.")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)
    try:
        runs = resolve_runs(args.method, args.benchmarks, args.configs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    output = args.output or os.path.join("output", "training_free", args.method or "configs")

    import ldvc_d2  # noqa: F401  (registrations, detectron2 shims)
    from ldvc_d2.data import load_user_modules
    from ldvc_d2.utils import write_json_atomic
    from ldvc_d2.utils.io import atomic_path

    load_user_modules(args.register)
    for run in runs:
        run.dataset = config_dataset(run.config, args.opts)
        check_dataset_ready(run)
        if run.status == "skipped":
            print(f"skip {run.name}: {run.message}", flush=True)
    os.makedirs(output, exist_ok=True)
    start = time.perf_counter()
    for i, run in enumerate(runs):
        if run.status == "skipped":
            continue
        print(f"[{i + 1}/{len(runs)}] {run.name}: {run.dataset} ({run.num_images:,} images), {run.config}; "
              f"log {os.path.join(output, run.name + '.log')}", flush=True)
        evaluate(run, output, args.opts, args.register, args.rerun)
        if run.status == "failed":
            print(f"  FAILED: {run.message}", flush=True)
        else:
            took = "reused earlier result" if run.status == "reused" else f"in {_minutes(run.seconds)}"
            miou = run.result["mIoU"]
            print(f"  mIoU {'n/a' if miou is None else f'{miou:.2f}'} ({took}); elapsed "
                  f"{_minutes(time.perf_counter() - start)}; {eta_line(runs, i)}", flush=True)
    title = f"Training-free evaluation: {args.method}" if args.method else "Training-free evaluation"
    markdown, data = tables(title, runs)
    data["overrides"] = list(args.opts)
    with atomic_path(os.path.join(output, "table.md")) as tmp:
        with open(tmp, "w") as f:
            f.write(markdown)
    write_json_atomic(os.path.join(output, "table.json"), data)
    print("\n" + markdown + f"\nWrote {output}/table.md and table.json")
    return 1 if any(r.status == "failed" for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
