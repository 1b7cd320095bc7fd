"""CLIP-to-Seg distillation, "C2S" (seed 003, SEED_SYSTEMS §3): a closed-set student learns CLIP's
zero-shot ability and runs without CLIP's image tower.

Pieces in the order of SEED_SYSTEMS §3.1: C1/C4 :class:`CLIPTeacher`; C2–C3 :func:`window_seeds`,
:func:`cosine_kmeans`, :func:`merge_clusters`, :func:`mine_latent_classes`, :func:`pseudo_mask`; C5–C8
:func:`global_prototype`, :class:`CLSBank`, :func:`gather_tokens`, :func:`region_prototypes`,
:func:`info_nce`; C9–C11 :class:`LatentDecoder`, :func:`class_logits`, :func:`pixel_loss`; C12–C13 the
meta-architecture :class:`C2S`; students in :mod:`.students` (``C2S_STUDENT_REGISTRY``).
"""
from .distill import CLSBank, gather_tokens, global_prototype, info_nce, region_prototypes
from .latent import LatentDecoder, class_logits, pixel_loss
from .meta_arch import C2S
from .mining import cosine_kmeans, merge_clusters, mine_latent_classes, pseudo_mask, window_seeds
from .students import C2S_STUDENT_REGISTRY, build_student
from .teacher import CLIPTeacher, mask_boxes

__all__ = [
    "C2S", "C2S_STUDENT_REGISTRY", "CLIPTeacher", "CLSBank", "LatentDecoder", "build_student", "class_logits",
    "cosine_kmeans", "gather_tokens", "global_prototype", "info_nce", "mask_boxes", "merge_clusters",
    "mine_latent_classes", "pixel_loss", "pseudo_mask", "region_prototypes", "window_seeds",
]
