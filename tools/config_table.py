"""Writes the key table of configs/README.md: every ldvc_d2 config key with its default, the methods that read
it (measured: each method's shapes config is built with a config that records the keys it reads) and its
comment from the room that defines it.

    python tools/config_table.py            # rewrite the table in configs/README.md
    python tools/config_table.py --check    # exit 1 if the table is out of date
"""
import argparse
import ast
import inspect
import os
import sys
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import ldvc_d2  # noqa: E402,F401
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from ldvc_d2 import config as config_module  # noqa: E402
from ldvc_d2.predictor import load_config  # noqa: E402
from ldvc_d2.utils.config_reads import ReadRecordingCfgNode, recorded_reads  # noqa: E402

README = os.path.join(REPO, "configs", "README.md")
BEGIN, END = "<!-- key table: python tools/config_table.py -->", "<!-- end of key table -->"
# One config per meta-architecture, built with the tiny random CLIP to see which keys it reads.
METHOD_CONFIGS = {
    "LDVC": "configs/shapes/ldvc.yaml", "ZegCLIP": "configs/shapes/zegclip.yaml",
    "CLIPtrase": "configs/cliptrase/shapes.yaml", "DeOP": "configs/deop/shapes.yaml",
    "DeOP stage 1": "configs/deop/stage1_shapes.yaml", "DeOP stage 2": "configs/deop/proposals_shapes.yaml",
    "C2S": "configs/c2s/shapes.yaml", "MaskCLIP": "configs/maskclip/shapes.yaml", "SCLIP": "configs/sclip/shapes.yaml",
    "ClearCLIP": "configs/clearclip/shapes.yaml", "NACLIP": "configs/naclip/shapes.yaml",
    "ProxyCLIP": "configs/proxyclip/shapes.yaml",
}
# Keys read outside the model (trainer, data mapper, evaluator, checkpointer).
OUTSIDE = {"SOLVER.": "trainer", "INPUT.": "data mapper", "DATASETS.": "data / test vocabulary",
           "TEST.": "evaluator", "MODEL.WEIGHTS_PARTIAL_LOAD": "checkpointer"}


def key_comments() -> Dict[str, str]:
    """Full key -> its comment, from the source of every room's add_*_config (inline, or the lines above)."""
    comments = {}
    for add, _ in config_module._ROOMS:
        module = inspect.getmodule(add)
        source = inspect.getsource(module).splitlines()
        tree = ast.parse("\n".join(source))
        aliases = {}
        pending: List[str] = []
        for lineno, line in enumerate(source, 1):
            stripped = line.strip()
            if stripped.startswith("#"):
                pending.append(stripped.lstrip("# "))
                continue
            node = next((n for n in ast.walk(tree) if isinstance(n, ast.Assign) and n.lineno == lineno), None)
            if node is None:
                pending = []
                continue
            targets = [ast.unparse(t) for t in node.targets]
            value = ast.unparse(node.value)
            if isinstance(node.value, ast.Attribute) and value.startswith("cfg."):  # i = cfg.INPUT
                aliases[targets[0]] = _expand(value, aliases)
                pending = []
                continue
            if value == "CN()":  # c = cfg.MODEL.CLIP = CN()
                for alias in targets[:-1]:
                    aliases[alias] = _expand(targets[-1], aliases)
            inline = line.split("  # ", 1)[1] if "  # " in line else ""
            text = " ".join(pending + [inline]).strip()
            pending = []
            for t in targets:
                full = _expand(t, aliases)
                if full.count(".") and value != "CN()":
                    comments[full] = text
    return comments


def _expand(target: str, aliases: Dict[str, str]) -> str:
    head, _, rest = target.partition(".")
    base = aliases.get(head, head)
    full = f"{base}.{rest}" if rest else base
    return full[4:] if full.startswith("cfg.") else full


def readers() -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    for method, path in METHOD_CONFIGS.items():
        # the tiny random CLIP and random students: nothing downloaded
        cfg = load_config(os.path.join(REPO, path), ["MODEL.CLIP.MODEL", "LDVC-Tiny", "MODEL.CLIP.PRETRAINED", "",
                                                     "MODEL.C2S.STUDENT_WEIGHTS", "", "MODEL.DEVICE", "cpu"])
        with recorded_reads() as reads:
            build_model(ReadRecordingCfgNode(cfg))
        for key in reads:
            found.setdefault(key, []).append(method)
    return found


def table() -> str:
    cfg = get_cfg()
    config_module.add_ldvc_config(cfg)
    comments, read = key_comments(), readers()
    rows = ["| key | default | read by | what it is (source: [n] DESIGN/paper section, released code, or ours) |",
            "|---|---|---|---|"]
    for key in sorted(comments):
        node = cfg
        for part in key.split("."):
            node = node[part]
        if isinstance(node, dict):
            continue
        who = ", ".join(read.get(key, [])) or next((v for k, v in OUTSIDE.items() if key.startswith(k)), "—")
        text = comments[key].replace("|", "\\|")
        rows.append(f"| `{key}` | `{node!r}` | {who} | {text} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if configs/README.md's table is out of date")
    args = parser.parse_args()
    text = open(README).read()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:start] + "\n" + table() + "\n" + text[stop:]
    if args.check:
        if new != text:
            print("configs/README.md: the key table is out of date; run python tools/config_table.py")
            return 1
        return 0
    tmp = README + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, README)
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
