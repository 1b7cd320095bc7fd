"""DeOP (seed 004): decoupled one-pass zero-shot segmentation (SEED_SYSTEMS §4).

Stage 3 pieces, in the order of §4.1: D1 proposal sources (:mod:`.sources`, the stage-2 network in
``proposals/``), D2 additive prompts and D3 patch severance (``clip.additive_prompts``, ``clip.severance``),
D5 CoOp text prompts and t_∅ (``clip.coop``), D6-D8 :class:`ClassificationAnchorLearning`, D9/D10
:func:`combine_proposals` / :func:`deop_loss`, and the :class:`DeOP` meta-architecture. Stage 1
(:class:`DeOPPromptLearner`) and stage 2 (:class:`DeOPProposals`) are registered here too.
"""
from .cal_head import ClassificationAnchorLearning, class_logits, heatmap_pool, sine_positions
from .loss import combine_proposals, deop_loss, released_loss
from .meta_arch import DeOP
from .prompt_learning import DeOPPromptLearner
from .proposals import DeOPProposals
from .sources import cluster_proposals, gt_proposals

__all__ = [
    "ClassificationAnchorLearning", "DeOP", "DeOPPromptLearner", "DeOPProposals", "class_logits", "cluster_proposals", "combine_proposals", "deop_loss",
    "gt_proposals", "heatmap_pool", "released_loss", "sine_positions",
]
