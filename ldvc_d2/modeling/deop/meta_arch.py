"""The DeOP meta-architecture, stage 3 (Han et al., ICCV 2023, seed 004 Fig. 3; SEED_SYSTEMS §4.1).

    image ─► proposal source (frozen) ─► N mask logits M (B×N×h×w)                                   [D1]
    image ─► frozen CLIP, additive prompts P_b [D2], patch severance in the last block(s) with M [D3]
          ─► dense F_V [D4] ─► CAL(F_V, M) ─► F_I (B×N×d) [D6-D7]
    class names ─► CoOp text prompts [D5] ─► T; [T; t_∅] ─► ℓ = scale·F_I Tᵀ [D8]
    S_c = Σ_n softmax(ℓ_n)_c σ(M_n)  (no-object dropped at inference [D9]; loss D10 on all C+1 channels)

Proposal sources (MODEL.DEOP.PROPOSALS): "maskformer" (stage 2, weights MODEL.DEOP.PROPOSAL_WEIGHTS), "gt"
(ORACLE ground-truth segments: a diagnostic, it leaks unseen extents; whole-image inference reads the label
file of each test image) and "clusters" (DBSCAN regions of a plain frozen CLIP pass, training-free).
Trainable: CAL with Q_pos, t_∅, the CoOp context, the additive prompts. Nothing of CLIP, nor the proposals.
"""
import logging
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from .config import PROPOSAL_SOURCES
from ..clip import BlockHook, PromptedVisionEncoder, build_clip_model
from ..clip.additive_prompts import AdditiveVisualPrompts
from ..clip.clustering import self_correlation
from ..clip.coop import CoOpTextEncoder, NoObjectEmbedding
from ..clip.severance import severance_hooks, token_mask_weights
from ..segmentor import ZeroShotSegmentor
from ..segmentor_config import segmentor_config
from .cal_head import ClassificationAnchorLearning, class_logits
from .loss import combine_proposals, deop_loss
from .weights import load_proposal_net, load_text_context, read_oracle_label
from .sources import cluster_proposals, gt_proposals

__all__ = ["DeOP"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class DeOP(ZeroShotSegmentor):
    """DeOP stage 3 (see the module docstring); MODEL.DEOP.* in modeling/deop/config.py."""

    @configurable
    def __init__(self, *, clip_model: str, clip_pretrained: str, clip_cache_dir: str = "", proposals: str,
                 proposal_net: Optional[nn.Module] = None, num_proposals: int = 100, binary_logit: float = 10.0,
                 cluster: Optional[Dict[str, object]] = None, gps_layers=(-1,), gps_alpha=(1.0,),
                 gps_mode: str = "mask_weighted", visual_prompt_layers=(0, 1, 2, 3, 4, 5), visual_prompt_grid: int = 24,
                 text_ctx: int = 16, text_ctx_std: float = 0.02, text_prompt_weights: str = "", cal_layers: int = 1,
                 cal_heads: int = 8, cal_ffn: int = 1024, cal_dropout: float = 0.1, cal_heat_dropout: float = 0.0,
                 cal_heatmap_heads: int = 0, allow_random_text_prompts: bool = True, logit_scale: float = 100.0,
                 output_sig: float = 3.0, loss: str = "released", loss_weights=(2.0, 0.8), loss_num_class: int = 0,
                 pos_interpolation: str = "bicubic_size", **kwargs):
        model, tokenizer = build_clip_model(clip_model, clip_pretrained, cache_dir=clip_cache_dir or None)
        visual = PromptedVisionEncoder(model.visual, num_prompts=0, intermediate_layers=[],
                                       pos_interpolation=pos_interpolation)
        pad = visual.patch_size * (1 if proposals != "maskformer" else 32 // math.gcd(visual.patch_size, 32))
        super().__init__(pad_multiple=pad, **kwargs)
        if proposals not in PROPOSAL_SOURCES:
            raise ValueError(f"MODEL.DEOP.PROPOSALS must be one of {list(PROPOSAL_SOURCES)}, got '{proposals}'.")
        if proposals == "gt" and self.inference_mode != "whole":
            raise ValueError("MODEL.DEOP.PROPOSALS 'gt' (ORACLE) needs MODEL.SEGMENTOR.INFERENCE.MODE 'whole' (one "
                             "label per image).")
        if proposals == "maskformer" and proposal_net is None:
            raise ValueError("MODEL.DEOP.PROPOSALS 'maskformer' needs a proposal network (built from MODEL.DEOP.PROPOSAL_NET).")
        if len(visual_prompt_layers) and max(visual_prompt_layers) >= visual.num_layers:
            raise ValueError(f"MODEL.DEOP.VISUAL_PROMPT_LAYERS {list(visual_prompt_layers)}: the image encoder has "
                             f"{visual.num_layers} blocks (0 = before ln_pre, b = before block b < {visual.num_layers}).")
        self.visual = visual
        self.visual_prompts = (AdditiveVisualPrompts(visual_prompt_layers, visual_prompt_grid, visual.width)
                               if len(visual_prompt_layers) else None)
        self.text = CoOpTextEncoder(model, tokenizer, n_ctx=text_ctx, init_std=text_ctx_std)
        if text_prompt_weights:
            load_text_context(self.text, text_prompt_weights)
        elif allow_random_text_prompts:
            logger.info("DeOP: text prompts start from random values (MODEL.DEOP.ALLOW_RANDOM_TEXT_PROMPTS True, no "
                        "MODEL.DEOP.TEXT_PROMPT_WEIGHTS).")
        self.no_object = NoObjectEmbedding(visual.output_dim)
        self.cal = ClassificationAnchorLearning(visual.output_dim, num_proposals, cal_layers, cal_heads, cal_ffn,
                                                cal_dropout, cal_heat_dropout, cal_heatmap_heads)
        self.proposal_net = proposal_net
        if proposal_net is not None:
            for p in proposal_net.parameters():
                p.requires_grad_(False)
        self.proposals, self.num_proposals, self.binary_logit = proposals, num_proposals, binary_logit
        self.cluster = dict(cluster or {})
        self.gps = (list(gps_layers), list(gps_alpha), gps_mode)
        self.logit_scale, self.output_sig = logit_scale, output_sig
        self.loss_kind, self.loss_weights, self.loss_num_class = loss, tuple(loss_weights), loss_num_class
        self._oracle_label: Optional[torch.Tensor] = None
        if self.train_class_names and not 0 <= loss_num_class <= len(self.train_class_names):
            raise ValueError(f"MODEL.DEOP.LOSS_NUM_CLASS is {loss_num_class}; it must be 0 (all) or at most the "
                             f"{len(self.train_class_names)} training classes of DATASETS.TRAIN.")
        if proposals == "gt":
            logger.warning("DeOP with ORACLE proposals (MODEL.DEOP.PROPOSALS 'gt'): masks come from the ground "
                           "truth, unseen objects included. Diagnostic only, not a zero-shot result.")

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        d, t = cfg.MODEL.DEOP, cfg.MODEL.CLIP
        proposal_net = None
        if d.PROPOSALS == "maskformer":
            proposal_net = load_proposal_net(cfg, d.PROPOSAL_WEIGHTS)
        args = segmentor_config(cfg)
        args["calibration"] = 0.0  # D9: no seen-score calibration
        args.update({
            "clip_model": t.MODEL, "clip_pretrained": t.PRETRAINED, "clip_cache_dir": t.CACHE_DIR,
            "proposals": d.PROPOSALS, "proposal_net": proposal_net, "num_proposals": d.NUM_PROPOSALS,
            "binary_logit": d.BINARY_MASK_LOGIT,
            "cluster": {"layer": d.CLUSTER_LAYER, "eps": d.CLUSTER_EPS, "min_samples": d.CLUSTER_MIN_SAMPLES,
                        "scale": d.CLUSTER_SCALE},
            "gps_layers": list(d.GPS_LAYERS), "gps_alpha": list(d.GPS_ALPHA), "gps_mode": d.GPS_MODE,
            "pos_interpolation": t.POS_INTERPOLATION,
            "visual_prompt_layers": list(d.VISUAL_PROMPT_LAYERS), "visual_prompt_grid": d.VISUAL_PROMPT_GRID,
            "text_ctx": d.TEXT_CTX, "text_ctx_std": d.TEXT_CTX_INIT_STD, "text_prompt_weights": d.TEXT_PROMPT_WEIGHTS,
            "cal_layers": d.CAL_LAYERS, "cal_heads": d.CAL_HEADS, "cal_ffn": d.CAL_FFN, "cal_dropout": d.CAL_DROPOUT,
            "cal_heat_dropout": d.CAL_HEAT_DROPOUT, "cal_heatmap_heads": d.CAL_HEATMAP_HEADS,
            "allow_random_text_prompts": d.ALLOW_RANDOM_TEXT_PROMPTS,
            "logit_scale": d.LOGIT_SCALE, "output_sig": d.OUTPUT_SIG, "loss": d.LOSS,
            "loss_weights": list(d.LOSS_WEIGHTS), "loss_num_class": d.LOSS_NUM_CLASS,
        })
        return args

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        d = cfg.MODEL.DEOP
        source = {"gt": "ORACLE ground-truth segments (diagnostic, leaks unseen extents)",
                  "clusters": f"DBSCAN clusters of block {d.CLUSTER_LAYER} (training-free)",
                  "maskformer": f"MaskFormer '{d.PROPOSAL_WEIGHTS}'"}.get(d.PROPOSALS, d.PROPOSALS)
        return (f"{super().describe_protocol(cfg)}, proposals: {source}, N {d.NUM_PROPOSALS}, patch severance "
                f"{d.GPS_MODE} at blocks {list(d.GPS_LAYERS)} alpha {list(d.GPS_ALPHA)}, CAL K={d.CAL_LAYERS}, "
                f"no calibration, trained on {cfg.MODEL.SEGMENTOR.TRAINING_CLASSES} classes of {list(cfg.DATASETS.TRAIN)}")

    def train(self, mode: bool = True):
        """The trainable parts follow ``mode``; frozen CLIP and the proposal network stay in eval mode."""
        super().train(mode)
        self.visual.eval()
        for module in self.text.children():
            module.eval()
        if self.proposal_net is not None:
            self.proposal_net.eval()
        return self

    # ---- pieces ------------------------------------------------------------------------------------
    def encode_text(self, class_names: List[str]) -> torch.Tensor:
        return self.text(class_names)

    @torch.no_grad()
    def proposal_masks(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(D1) Normalised B×3×H×W images (+ B×H×W full labels for the ORACLE) → B×N×h×w mask logits."""
        if self.proposals == "gt":
            if labels is None:
                raise ValueError("DeOP ORACLE proposals need the ground truth of the image (sem_seg or sem_seg_file_name).")
            return gt_proposals(labels, self.num_proposals, self.binary_logit, self.ignore_label)
        if self.proposals == "clusters":
            c = self.cluster
            tap = BlockHook(layer=int(c["layer"]), tap=lambda q, k, v: self_correlation(q, k, v), name="correlation")
            out = self.visual(images, hooks=[tap])
            grid = tuple(out["dense"].shape[-2:])
            size = (images.shape[-2] // 4, images.shape[-1] // 4)
            return cluster_proposals(out["correlation"], grid, size, self.num_proposals, self.binary_logit,
                                     eps=float(c["eps"]), min_samples=int(c["min_samples"]), scale=str(c["scale"]))
        masks = self.proposal_net(images)
        if masks.shape[1] != self.num_proposals:
            raise ValueError(f"The proposal network returns {masks.shape[1]} masks but MODEL.DEOP.NUM_PROPOSALS is "
                             f"{self.num_proposals}; set it to the network's query count.")
        return masks

    def semantic_scores(self, images: torch.Tensor, text: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Normalised B×3×H×W, T C×d, masks B×N×h×w → S′ B×(C+1)×H×W (D2-D8, then D9's sum).

        The proposals on the patch grid, σ(bilinear(M)) with a [CLS] column, are computed once here and
        shared: the mask-based severance [D3] uses them all, CAL [D7] the patch columns (the grid of
        F_V, out["dense"], is H // patch × W // patch, the encoder's own).
        """
        grid = (images.shape[-2] // self.visual.patch_size, images.shape[-1] // self.visual.patch_size)
        token_masks = token_mask_weights(masks, grid)  # B×N×(1 + h·w)
        layers, alphas, mode = self.gps
        hooks = severance_hooks(layers, alphas, mode, token_masks=token_masks) if layers else None
        out = self.visual(images, hooks=hooks, additive_prompts=self.visual_prompts)
        anchors = self.cal(out["dense"], token_masks[:, :, 1:])
        logits = class_logits(anchors, self.no_object.append(text), self.logit_scale)
        return combine_proposals(logits, masks, images.shape[-2:])

    # ---- training and inference ---------------------------------------------------------------------
    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        images, targets = self.training_batch(batched_inputs)
        labels = None
        if self.proposals == "gt":  # the full labels (unseen classes included), padded like the targets
            labels = torch.stack([self._pad(x["sem_seg"].to(self.device)[None], self.ignore_label, targets.shape[-2:])[0]
                                  for x in batched_inputs])
        masks = self.proposal_masks(images, labels)
        scores = self.semantic_scores(images, self.text_features(self.train_class_names), masks)
        return deop_loss(scores, targets, kind=self.loss_kind, weights=self.loss_weights, ignore_label=self.ignore_label,
                         output_sig=self.output_sig, num_dice=self.loss_num_class)

    def batch_window_scores(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(D9) B×C×H×W: S without the no-object channel (the ORACLE: one image, its label set by :meth:`inference`)."""
        labels = None
        if self._oracle_label is not None:
            h, w = self._oracle_label.shape
            labels = F.pad(self._oracle_label, (0, images.shape[-1] - w, 0, images.shape[-2] - h),
                           value=self.ignore_label)[None].expand(images.shape[0], -1, -1)
        masks = self.proposal_masks(images, labels)
        return self.semantic_scores(images, text, masks)[:, :-1]

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        if self.proposals != "gt":
            return super().inference(batched_inputs)
        outputs = []
        for inputs in batched_inputs:  # the ORACLE: one image at a time, with its own label
            self._oracle_label = read_oracle_label(inputs, self.ignore_label).to(self.device)
            try:
                outputs += super().inference([inputs])
            finally:
                self._oracle_label = None
        return outputs
