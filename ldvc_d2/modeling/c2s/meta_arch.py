"""The C2S meta-architecture: CLIP-to-Seg distillation (seed 003; SEED_SYSTEMS §3).

Training (eq. 6, L = L_g + L_l + L_p, weights MODEL.C2S.LOSS_WEIGHTS):

    crop ─► student ─► F (B×D×H/4×W/4) ──┬─► global prototype vs [CLS] bank ─► L_g   (C5–C6)
    crop ─► frozen CLIP teacher ─► C_g, C_d ─► latent mining ─► Y_p (C2–C3)
    Y_p regions ─► masked crops ─► teacher ─► C_l ─► local prototypes vs C_l ─► L_l   (C4, C7–C8)
    latent prototypes + [C_g; C_l] ─► decoder ─► A'_u ─► logits over seen + latent ─► L_p (C9–C11)

Inference (C13): the student only; scores softmax_c(α Fᵀ A) over the test vocabulary, A from the frozen
CLIP *text* tower (cached per vocabulary). The teacher (CLIP's image tower) is built on the first
training step and never stored in the model's state dict, so ``--eval-only``, the predictor and
``tools/analyze_model.py`` run a model without it. The text tower is built alone
(:func:`~ldvc_d2.modeling.clip.loading.build_clip_text_model`): no CLIP image tower is ever constructed
outside training.
"""
import logging
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..clip import PromptedTextEncoder, TemplateEnsembleTextEncoder
from ..clip.loading import build_clip_text_model
from ..label_ops import resize_labels_nearest
from ..segmentor import ZeroShotSegmentor
from ..segmentor_config import segmentor_config
from .distill import CLSBank, gather_tokens, global_prototype, info_nce, region_prototypes
from .latent import LatentDecoder, class_logits, pixel_loss
from .mining import mine_latent_classes, pseudo_mask
from .students import build_student
from .teacher import CLIPTeacher

__all__ = ["C2S"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class C2S(ZeroShotSegmentor):
    """Student + frozen text embeddings; a lazily built CLIP teacher while training."""

    @configurable
    def __init__(self, *, student: nn.Module, text: nn.Module, embed_dim: int, teacher_args: Dict[str, object],
                 latent_decoder: Optional[nn.Module] = None, tau: float = 0.07, bank_size: int = 24,
                 mining: Optional[Dict[str, object]] = None, alpha: float = 1.0, beta: float = 10.0,
                 loss_weights: Sequence[float] = (1.0, 1.0, 1.0), ce_weight: float = 1.0,
                 loss_kwargs: Optional[Dict[str, float]] = None, global_distill: bool = True, local_distill: bool = True,
                 head_lr_multiplier: float = 1.0, **kwargs):
        """
        Args:
            student: a :mod:`.students` network, B×3×H×W -> B×embed_dim×H/s×W/s.
            text: frozen CLIP text encoder (class names -> C×embed_dim, L2-normalised).
            teacher_args: :class:`CLIPTeacher` arguments, used on the first training step.
            latent_decoder: :class:`LatentDecoder` (None: no latent embeddings, the ablation).
            mining: :func:`mine_latent_classes` keyword arguments.
            head_lr_multiplier: lr × of the student's decode head and the latent decoder (:meth:`lr_multipliers`).
            others: MODEL.C2S.* (modeling/c2s/config.py); kwargs: :class:`ZeroShotSegmentor`'s.
        """
        super().__init__(pad_multiple=student.size_divisibility, **kwargs)
        self.student, self.text = student, text.requires_grad_(False)
        self.latent_decoder = latent_decoder
        self.bank = CLSBank(bank_size, embed_dim)
        self.teacher_args, self._teacher_slot = dict(teacher_args), []  # a list: never a registered submodule
        self.tau, self.alpha, self.beta, self.ce_weight = tau, alpha, beta, ce_weight
        self.mining = dict(mining or {})
        self.loss_weights = list(loss_weights)
        self.loss_kwargs = dict(loss_kwargs or {})
        self.global_distill, self.local_distill = global_distill, local_distill
        self.head_lr_multiplier = head_lr_multiplier
        self._register_load_state_dict_pre_hook(self._skip_training_only_tensors)

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        c, t, loss = cfg.MODEL.C2S, cfg.MODEL.CLIP, cfg.MODEL.SEGMENTOR.LOSS
        model, tokenizer = build_clip_text_model(t.MODEL, t.PRETRAINED, cache_dir=t.CACHE_DIR or None)
        if t.TEXT_TEMPLATES:
            text = TemplateEnsembleTextEncoder(model, tokenizer, templates=list(t.TEXT_TEMPLATES))
        else:
            text = PromptedTextEncoder(model, tokenizer, num_prompts=0, init="template", template=t.TEXT_TEMPLATE)
        dim = int(model.output_dim)  # the teacher (image tower) is built on the first training step only (C13)
        if not c.STUDENT_WEIGHTS:
            logger.warning(f"C2S student {c.STUDENT} randomly initialised (MODEL.C2S.STUDENT_WEIGHTS ''; "
                           f"MODEL.C2S.ALLOW_RANDOM_STUDENT {c.ALLOW_RANDOM_STUDENT}).")
        args = segmentor_config(cfg)
        args.update({
            "student": build_student(c.STUDENT, dim, weights=c.STUDENT_WEIGHTS, img_size=int(cfg.INPUT.CROP.SIZE[0]),
                                     drop_path=c.DROP_PATH),
            "text": text, "embed_dim": dim,
            "teacher_args": {"clip_model": t.MODEL, "clip_pretrained": t.PRETRAINED,
                             "clip_cache_dir": t.CACHE_DIR, "global_size": c.TEACHER_GLOBAL_SIZE,
                             "crop_size": c.LOCAL_CROP_SIZE},
            "latent_decoder": LatentDecoder(dim, num_layers=c.DECODER_LAYERS, num_heads=c.DECODER_HEADS,
                                            ffn=c.DECODER_FFN, dropout=c.DECODER_DROPOUT) if c.LATENT_EMBEDDINGS else None,
            "tau": c.TAU, "bank_size": c.BANK_SIZE,
            "mining": {"window_sizes": list(c.WINDOW_SIZES), "iters": c.KMEANS_ITERS, "threshold": c.MERGE_THRESHOLD,
                       "min_tokens": c.MIN_CLUSTER, "max_classes": c.MAX_LATENT, "linkage": c.MERGE_LINKAGE,
                       "center": c.CENTER_TOKENS},
            "alpha": c.ALPHA, "beta": c.BETA, "loss_weights": list(c.LOSS_WEIGHTS), "ce_weight": c.CE_WEIGHT,
            "loss_kwargs": {"focal_weight": loss.FOCAL_WEIGHT, "dice_weight": loss.DICE_WEIGHT,
                            "alpha": loss.FOCAL_ALPHA, "gamma": loss.FOCAL_GAMMA,
                            "ignore_as_negative": loss.IGNORE_AS_NEGATIVE},
            "global_distill": c.GLOBAL_DISTILL, "local_distill": c.LOCAL_DISTILL,
            "head_lr_multiplier": c.HEAD_LR_MULTIPLIER,
        })
        return args

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        c = cfg.MODEL.C2S
        return (f"{super().describe_protocol(cfg)}, student {c.STUDENT} only (no CLIP image tower), softmax of "
                f"{c.ALPHA}*F^T A over frozen CLIP text embeddings, seen-score calibration "
                f"{cfg.MODEL.SEGMENTOR.SEEN_SCORE_CALIBRATION if cfg.MODEL.SEGMENTOR.TRAINING_CLASSES == 'seen' else 0.0}")

    # ---- optimisation and evaluation models ------------------------------------------------------------
    sync_bn_modules = ("student",)  # BatchNorm converted to SyncBatchNorm under multi-GPU training (MMSeg: SyncBN)
    training_only_prefixes = ("latent_decoder.", "bank.")  # not in the evaluation model (:meth:`for_inference`)

    def lr_multipliers(self) -> Dict[str, tuple]:
        """The student's decode head and the latent decoder at MODEL.C2S.HEAD_LR_MULTIPLIER (MMSeg's
        ``custom_keys={'head': lr_mult 10}``: in an MMSeg model every module outside the backbone belongs to
        the decode head — ours for the latent decoder); the student's backbone at ×1."""
        own = {f"student.{p}": ("decode_head", self.head_lr_multiplier) for p in self.student.head_prefixes}
        own["student"] = ("student_backbone", 1.0)
        if self.latent_decoder is not None:
            own["latent_decoder"] = ("decode_head", self.head_lr_multiplier)
        return own

    def for_inference(self) -> "C2S":
        """The evaluation/export model: the latent decoder and the [CLS] bank are training-only (C13: the
        student alone runs at test) and are removed; their tensors in a checkpoint are skipped on load."""
        self.latent_decoder, self._inference_only = None, True
        if hasattr(self, "bank"):
            del self.bank
        return self

    def _skip_training_only_tensors(self, state_dict, prefix, *args) -> None:
        """Load hook of the evaluation model: drop the checkpoint's ``latent_decoder.*`` / ``bank.*`` entries."""
        if getattr(self, "_inference_only", False):
            for key in [k for k in state_dict if k[len(prefix):].startswith(self.training_only_prefixes)]:
                del state_dict[key]

    # ---- inference (C13) ----------------------------------------------------------------------
    def encode_text(self, class_names: List[str]) -> torch.Tensor:
        return self.text(class_names)

    def train(self, mode: bool = True):
        super().train(mode)
        self.text.eval()
        return self

    def batch_window_scores(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        logits, _ = class_logits(self.student(images), text, None, self.alpha, self.beta)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False).softmax(dim=1)

    # ---- training --------------------------------------------------------------------------------
    @property
    def teacher(self) -> CLIPTeacher:
        """The frozen CLIP image tower, built on first use, on this model's device (not a submodule)."""
        if not self._teacher_slot:
            self._teacher_slot.append(CLIPTeacher(**self.teacher_args))
        teacher = self._teacher_slot[0]
        if teacher.visual.visual.conv1.weight.device != self.device:
            teacher.to(self.device)
        return teacher

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        images, targets = self.training_batch(batched_inputs)
        valid = torch.zeros_like(targets, dtype=torch.bool)
        for v, x in zip(valid, batched_inputs):
            v[: x["image"].shape[-2], : x["image"].shape[-1]] = True
        features = self.student(images)
        seen_text = self.text_features(self.train_class_names)

        def seen_pixel_losses() -> Dict[str, torch.Tensor]:  # the classifier of seen classes alone (no decoder)
            return self._pixel_losses(*class_logits(features, seen_text, None, self.alpha, self.beta), targets)

        if not (self.global_distill or self.local_distill or self.latent_decoder is not None):
            return seen_pixel_losses()
        tokens = self.teacher.encode(images)
        out: Dict[str, torch.Tensor] = {}
        if self.global_distill:
            gathered, offset = gather_tokens(tokens["global"])
            candidates = self.bank.push(gathered)
            proto = global_prototype(features, tokens["global"], resize_labels_nearest(valid, features.shape[-2:]))
            positives = offset + torch.arange(len(images), device=self.device)
            out["loss_global"] = self.loss_weights[0] * info_nce(proto, candidates, positives, self.tau)
        if not (self.local_distill or self.latent_decoder is not None):
            return {**out, **seen_pixel_losses()}
        yp, feat_labels, image_index, region_label = self._pseudo_regions(tokens["dense"], targets, valid,
                                                                          features.shape[-2:])
        crops = self.teacher.region_tokens(images, yp[image_index] == region_label[:, None, None], image_index)
        protos = region_prototypes(features, feat_labels, image_index, region_label)
        if self.local_distill:
            out["loss_local"] = self.loss_weights[1] * (
                info_nce(protos, crops, torch.arange(len(protos), device=self.device), self.tau)
                if len(protos) else features.sum() * 0.0)
        if self.latent_decoder is None:
            return {**out, **seen_pixel_losses()}
        n_seen = len(self.train_class_names)
        queries, memory = [], []
        for b in range(len(images)):
            mine = image_index == b
            queries.append(protos[mine & (region_label >= n_seen)])
            memory.append(torch.cat([tokens["global"][b:b + 1], crops[mine]]))
        latent = self.latent_decoder(queries, memory)
        out.update(self._pixel_losses(*class_logits(features, seen_text, latent, self.alpha, self.beta), yp))
        if not any(len(q) for q in queries):  # every parameter takes part in every step (DDP)
            out["loss_ce"] = out["loss_ce"] + 0.0 * sum(p.sum() for p in self.latent_decoder.parameters())
        return out

    def _pixel_losses(self, logits: torch.Tensor, class_valid: torch.Tensor, targets: torch.Tensor):
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        losses = pixel_loss(logits, class_valid, targets, ignore_label=self.ignore_label, ce_weight=self.ce_weight,
                            loss_kwargs=self.loss_kwargs)
        return {k: self.loss_weights[2] * v for k, v in losses.items()}

    @torch.no_grad()
    def _pseudo_regions(self, dense: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, feature_size):
        """Mining (C2–C3) and the regions of Y_p. Returns (Y_p B×H×W whose latent ids are renumbered
        ``n_seen + j`` over the latent classes present at feature resolution, Y_p at feature resolution with
        ignore = -1, and per region its image index and label, image-major, labels ascending)."""
        n_seen, ignore = len(self.train_class_names), self.ignore_label
        grid = dense.shape[-2:]
        token_labels, token_valid = resize_labels_nearest(targets, grid), resize_labels_nearest(valid, grid)
        latent = torch.stack([mine_latent_classes(d, (lab == ignore) & ok, valid=ok, **self.mining)
                              for d, lab, ok in zip(dense, token_labels, token_valid)])
        yp = pseudo_mask(targets, latent, valid, n_seen, ignore)
        feat = resize_labels_nearest(yp, feature_size)
        size = max(ignore, n_seen + int(self.mining["max_classes"])) + 1
        image_index, region_label = [], []
        for b in range(len(yp)):
            present = torch.unique(feat[b])
            lut = torch.full((size,), ignore, dtype=yp.dtype, device=yp.device)
            lut[:n_seen] = torch.arange(n_seen, device=yp.device)
            latent_ids = present[(present >= n_seen) & (present != ignore)]
            lut[latent_ids] = n_seen + torch.arange(len(latent_ids), device=yp.device)
            yp[b], feat[b] = lut[yp[b]], lut[feat[b]]
            labels = torch.unique(feat[b])
            labels = labels[labels != ignore]
            image_index.append(torch.full_like(labels, b))
            region_label.append(labels)
        feat = torch.where(feat == ignore, -1, feat)
        return yp, feat, torch.cat(image_index), torch.cat(region_label)
