"""DeOP's one reader of weight files (SEED_SYSTEMS §4.1 D1, D5): every stage's checkpoint and the stage-2
backbone's ImageNet weights go through :func:`read_state_dict`, the plugin's safe loader
(:func:`~ldvc_d2.checkpoint.load_checkpoint_file`) underneath, so each refusal names the config key."""
import os
from typing import Dict, Sequence

import torch

from ...checkpoint import load_checkpoint_file

__all__ = ["read_state_dict"]

STAGE_HINT = "give the checkpoint (model_final.pth) of the earlier DeOP stage (docs/deop.md)."


def read_state_dict(path: str, key: str, hint: str = STAGE_HINT,
                    unwrap: Sequence[str] = ("model",)) -> Dict[str, torch.Tensor]:
    """The state dict in checkpoint file ``path`` (config key ``key``), through the safe loader.

    One reader for every DeOP weight file, so each refusal names the key, the file and ``hint`` (what to
    give instead). ``unwrap``: keys tried in order, each replacing the dict by its dict value when present
    (a detectron2 checkpoint keeps its weights under "model"; torchvision/timm files may use "state_dict").
    """
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"{key} '{path}' is not a file; {hint}")
    state = load_checkpoint_file(path)
    for name in unwrap:
        if isinstance(state, dict) and isinstance(state.get(name), dict):
            state = state[name]
    if not isinstance(state, dict):
        raise ValueError(f"{key} '{path}' holds a {type(state).__name__}, not a state dict; {hint}")
    return state
