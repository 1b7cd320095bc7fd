"""What DeOP's stage 3 reads from earlier stages and from the test data (SEED_SYSTEMS §4.1 D1, D5).

* :func:`load_proposal_net`: the stage-2 network (``MODEL.DEOP.PROPOSAL_NET``), its weights the
  ``proposal_net.*`` tensors of a stage-2 checkpoint (MODEL.DEOP.PROPOSAL_WEIGHTS), frozen afterwards.
* :func:`load_text_context`: the CoOp context learned in stage 1 (MODEL.DEOP.TEXT_PROMPT_WEIGHTS).
* :func:`read_oracle_label`: the ground truth of a test image for the ORACLE proposals.
All weight files are read by :func:`~.weight_files.read_state_dict` (shared with the stage-2 network's
backbone weights) through the plugin's safe loader (:func:`~ldvc_d2.checkpoint.load_checkpoint_file`).
"""
import logging
from typing import Dict

import numpy as np
import torch
from torch import nn

from ...utils.io import read_label
from ..label_ops import resize_labels_nearest
from .proposals import build_proposal_network
from .weight_files import read_state_dict

__all__ = ["load_proposal_net", "load_text_context", "read_oracle_label"]

PREFIX = "proposal_net."
logger = logging.getLogger(__name__)


def load_proposal_net(cfg, path: str) -> nn.Module:
    """Build the stage-2 network and load the ``proposal_net.*`` tensors of ``path`` (strict), frozen.

    ``path`` "" keeps random weights, for a stage-3 checkpoint (MODEL.WEIGHTS, which holds the proposal network
    too) loaded afterwards; training from scratch without it is refused by :func:`deop_config_problems`.
    """
    net = build_proposal_network(cfg)
    for p in net.parameters():
        p.requires_grad_(False)
    if not path:
        logger.info("DeOP: proposal network built without MODEL.DEOP.PROPOSAL_WEIGHTS; its weights must come "
                    "from MODEL.WEIGHTS (a stage-3 checkpoint).")
        return net.eval()
    state = read_state_dict(path, "MODEL.DEOP.PROPOSAL_WEIGHTS")
    weights = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not weights:
        raise ValueError(f"MODEL.DEOP.PROPOSAL_WEIGHTS '{path}' has no '{PREFIX}*' tensors; give a checkpoint "
                         "of the DeOPProposals stage (configs/deop/*proposals*.yaml).")
    missing, unexpected = net.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"MODEL.DEOP.PROPOSAL_WEIGHTS '{path}' does not fit MODEL.DEOP.PROPOSAL_NET: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}. Use the same MODEL.DEOP.PROPOSAL_NET as stage 2.")
    return net.eval()


def load_text_context(text: nn.Module, path: str) -> None:
    """Copy the one tensor of ``path`` whose key ends in "ctx" and fits ``text.ctx`` (n_ctx×width)."""
    state = read_state_dict(path, "MODEL.DEOP.TEXT_PROMPT_WEIGHTS")
    found = [k for k, v in state.items() if k.split(".")[-1] == "ctx" and tuple(np.shape(v)) == tuple(text.ctx.shape)]
    if len(found) != 1:
        raise ValueError(f"MODEL.DEOP.TEXT_PROMPT_WEIGHTS '{path}': expected one '*ctx' tensor of shape "
                         f"{tuple(text.ctx.shape)} (MODEL.DEOP.TEXT_CTX × text width), found {found or 'none'}.")
    with torch.no_grad():
        text.ctx.copy_(torch.as_tensor(state[found[0]]))


def read_oracle_label(inputs: Dict, ignore_label: int) -> torch.Tensor:
    """H×W long labels at the size of ``inputs["image"]``: its ``sem_seg``, else its ``sem_seg_file_name``
    resized by nearest neighbour (the test mapper resizes only the image)."""
    if "sem_seg" in inputs:
        label = torch.as_tensor(inputs["sem_seg"])
    elif "sem_seg_file_name" in inputs:
        label = torch.from_numpy(read_label(inputs["sem_seg_file_name"]).astype(np.int64))
    else:
        raise ValueError("DeOP ORACLE proposals (MODEL.DEOP.PROPOSALS 'gt') need 'sem_seg' or 'sem_seg_file_name' "
                         "in each input; they exist for registered datasets only, not for your own images.")
    size = tuple(inputs["image"].shape[-2:])
    if tuple(label.shape) != size:
        label = resize_labels_nearest(label[None], size)[0]
    return label.long()
