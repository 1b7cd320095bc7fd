"""The config of ldvc_d2: one entry point that adds every room's keys, the safe YAML reader, the table of
moved keys, and the start-of-run check.

Each room owns its keys and their checks, beside the code that reads them: MODEL.CLIP (modeling/clip/config.py),
MODEL.SEGMENTOR (modeling/segmentor_config.py), MODEL.LDVC / ZEGCLIP / CLIPTRASE / DEOP / C2S / MASKCLIP / SCLIP /
CLEARCLIP / NACLIP / PROXYCLIP (modeling/<method>/config.py), MODEL.TRAINING_FREE (modeling/training_free_config.py), SOLVER (engine/config.py), INPUT / DATASETS (data/config.py), TEST
(evaluation/config.py). configs/README.md lists every key, its default, who reads it and where its value
comes from.
"""
from typing import Iterable, List

import yaml
from detectron2.config import CfgNode as CN

from .data.config import add_data_config, data_config_problems
from .engine.config import add_engine_config, engine_config_problems
from .evaluation.config import add_evaluation_config, evaluation_config_problems
from .modeling.c2s.config import add_c2s_config, c2s_config_problems
from .modeling.clip.config import add_clip_config, clip_config_problems
from .modeling.cliptrase.config import add_cliptrase_config, cliptrase_config_problems
from .modeling.deop.config import add_deop_config, deop_config_problems
from .modeling.clearclip.config import add_clearclip_config, clearclip_config_problems
from .modeling.ldvc.config import add_ldvc_method_config, ldvc_config_problems
from .modeling.maskclip.config import add_maskclip_config, maskclip_config_problems
from .modeling.naclip.config import add_naclip_config, naclip_config_problems
from .modeling.proxyclip.config import add_proxyclip_config, proxyclip_config_problems
from .modeling.sclip.config import add_sclip_config, sclip_config_problems
from .modeling.segmentor_config import add_segmentor_config, segmentor_config_problems
from .modeling.training_free_config import add_training_free_config, training_free_config_problems
from .modeling.zegclip.config import add_zegclip_config, zegclip_config_problems

__all__ = ["MOVED_KEYS", "add_ldvc_config", "load_config_file", "merge_overrides", "validate_config"]

# Keys (or whole nodes) that moved when the methods got one namespace per concern: old -> new. A config or a
# command-line override naming an old key fails with an error naming the new one.
MOVED_KEYS = {
    "MODEL.LDVC.CLIP_MODEL": "MODEL.CLIP.MODEL",
    "MODEL.LDVC.CLIP_PRETRAINED": "MODEL.CLIP.PRETRAINED",
    "MODEL.LDVC.CLIP_CACHE_DIR": "MODEL.CLIP.CACHE_DIR",
    "MODEL.LDVC.TEXT_PROMPT_TEMPLATE": "MODEL.CLIP.TEXT_TEMPLATE",
    "MODEL.LDVC.TEXT_TEMPLATES": "MODEL.CLIP.TEXT_TEMPLATES",
    "MODEL.CLIPTRASE.TEMPLATES": "MODEL.CLIP.TEXT_TEMPLATES",
    "MODEL.CLIPTRASE.POS_INTERPOLATION": "MODEL.CLIP.POS_INTERPOLATION",
    "MODEL.DEOP.POS_INTERPOLATION": "MODEL.CLIP.POS_INTERPOLATION",
    "MODEL.LDVC.VISUAL_PROMPTS": "MODEL.CLIP.VISUAL_PROMPTS",
    "MODEL.LDVC.TEXT_PROMPTS": "MODEL.CLIP.TEXT_PROMPTS",
    "MODEL.LDVC.TEXT_PROMPT_INIT": "MODEL.CLIP.TEXT_PROMPT_INIT",
    "MODEL.LDVC.VISUAL_PROMPT_PROJECTION": "MODEL.CLIP.VISUAL_PROMPT_PROJECTION",
    "MODEL.LDVC.VISUAL_PROMPT_DROPOUT": "MODEL.CLIP.VISUAL_PROMPT_DROPOUT",
    "MODEL.LDVC.VISUAL_FINAL_NORM": "MODEL.CLIP.VISUAL_FINAL_NORM",
    "MODEL.LDVC.PATCH_SEVERANCE_LAYERS": "MODEL.CLIP.PATCH_SEVERANCE_LAYERS",
    "MODEL.LDVC.PATCH_SEVERANCE_ALPHA": "MODEL.CLIP.PATCH_SEVERANCE_ALPHA",
    "MODEL.LDVC.CLASS_EMBEDDINGS": "MODEL.SEGMENTOR.CLASS_EMBEDDINGS",
    "MODEL.LDVC.TRAINING_CLASSES": "MODEL.SEGMENTOR.TRAINING_CLASSES",
    "MODEL.LDVC.SEEN_SCORE_CALIBRATION": "MODEL.SEGMENTOR.SEEN_SCORE_CALIBRATION",
    "MODEL.LDVC.SELF_TRAINING": "MODEL.SEGMENTOR.SELF_TRAINING",
    "MODEL.LDVC.LOSS": "MODEL.SEGMENTOR.LOSS",
    "MODEL.LDVC.INFERENCE": "MODEL.SEGMENTOR.INFERENCE",
    "MODEL.LCTD": "MODEL.LDVC.LCTD",
    "MODEL.DEOP_PROPOSALS": "MODEL.DEOP.PROPOSAL_NET",
    "MODEL.DEOP_PROMPT_LEARNING": "MODEL.DEOP.PROMPT_LEARNING",
}

_ROOMS = (
    (add_data_config, data_config_problems),
    (add_engine_config, engine_config_problems),
    (add_evaluation_config, evaluation_config_problems),
    (add_clip_config, clip_config_problems),
    (add_segmentor_config, segmentor_config_problems),
    (add_ldvc_method_config, ldvc_config_problems),
    (add_zegclip_config, zegclip_config_problems),
    (add_cliptrase_config, cliptrase_config_problems),
    (add_deop_config, deop_config_problems),
    (add_c2s_config, c2s_config_problems),
    (add_training_free_config, training_free_config_problems),
    (add_maskclip_config, maskclip_config_problems),
    (add_sclip_config, sclip_config_problems),
    (add_clearclip_config, clearclip_config_problems),
    (add_naclip_config, naclip_config_problems),
    (add_proxyclip_config, proxyclip_config_problems),
)


def add_ldvc_config(cfg: CN) -> None:
    """Add every ldvc_d2 key to a detectron2 config (call before merging a file), and register the moved keys."""
    for add, _ in _ROOMS:
        add(cfg)
    for old, new in MOVED_KEYS.items():
        node = _node(cfg, new)
        for suffix in [""] + (["." + k for k in _leaves(node)] if isinstance(node, CN) else []):
            cfg.register_renamed_key(old + suffix, new + suffix, "See docs/moved_keys.md.")


def load_config_file(cfg: CN, path: str) -> None:
    """``cfg.merge_from_file(path)`` with YAML's safe loader for the file and every ``_BASE_`` it names.

    detectron2's ``merge_from_file`` falls back to ``yaml.unsafe_load``, where a ``!!python/...`` tag
    runs code; here such a tag is an error naming the file and line. A moved key is an error naming the file,
    the old key and the new one.
    """
    try:
        cfg.merge_from_file(path, allow_unsafe=False)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"'{mark.name}' line {mark.line + 1}" if mark is not None else f"'{path}' (or a _BASE_ it names)"
        raise ValueError(f"Config {where}: {e.problem}. ldvc_d2 reads configs with YAML's safe loader, so "
                         "Python tags (!!python/...), which would run code, are refused; write plain values.") from None
    except KeyError as e:
        raise ValueError(f"Config '{path}' (or a _BASE_ it names): {e.args[0]}") from None


def merge_overrides(cfg: CN, opts: Iterable[str]) -> None:
    """``cfg.merge_from_list(opts)`` (command-line KEY VALUE pairs); a moved or unknown key is an error naming it."""
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:  # yacs: KeyError for a moved key, AssertionError for an unknown one
        raise ValueError(f"Command-line override: {e.args[0]}") from None


def validate_config(cfg: CN, *, training: bool) -> None:
    """Every room's checks (sizes, names and lengths that would otherwise fail deep inside a run), at its start."""
    problems = [f"{old} was moved to {new} (set from Python code?)" for old, new in MOVED_KEYS.items()
                if _node(cfg, old) is not None]
    for _, check in _ROOMS:
        problems += check(cfg, training)
    if problems:
        raise ValueError("Invalid config: " + "; ".join(problems) + ".")


def _node(cfg: CN, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CN) or part not in node:
            return None
        node = node[part]
    return node


def _leaves(node: CN, prefix: str = "") -> List[str]:
    return [leaf for k, v in node.items()
            for leaf in (_leaves(v, f"{prefix}{k}.") if isinstance(v, CN) else [prefix + k])]
