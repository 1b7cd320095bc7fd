"""Prompt-template sets for template-ensemble class embeddings (CLIPtrase T4).

A class embedding is t_c = normalize(mean_k normalize(E_txt(template_k(c)))) (CLIP's prompt
ensembling; CLIPtrase ``clip_self_correlation.py:90-101``). Sets:

* ``imagenet80``: the 80 templates OpenAI published for zero-shot ImageNet (CLIP repository notebook
  "Prompt_Engineering_for_ImageNet"), used by CLIPtrase's script and by SCLIP.
* ``vild14``: the 14 templates of ViLD, used by CLIPtrase's detectron2 version
  (``cliptrase_d2/cliptrase/config.py:33``) and by OVSeg.

* ``zegclip15``: the 15 templates ZegCLIP averages for its COCO-Stuff baseline text (its training code
  loads the precomputed ``coco_multi.npy``; the list is the one of its ``get_embedding.ipynb``).
"""
from typing import Dict, List, Sequence, Tuple, Union

__all__ = ["TEMPLATE_SETS", "resolve_templates"]

IMAGENET_80: Tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.",
    "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.",
    "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "a photo of a {}.",
    "the origami {}.", "the {} in a video game.",
    "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.",
    "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.",
    "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.",
    "graffiti of the {}.", "a toy {}.",
    "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

VILD_14: Tuple[str, ...] = (
    "a photo of a {}.", "This is a photo of a {}",
    "There is a {} in the scene", "There is the {} in the scene",
    "a photo of a {} in the scene", "a photo of a small {}.",
    "a photo of a medium {}.", "a photo of a large {}.",
    "This is a photo of a small {}.", "This is a photo of a medium {}.",
    "This is a photo of a large {}.", "There is a small {} in the scene.",
    "There is a medium {} in the scene.", "There is a large {} in the scene.",
)

ZEGCLIP_15: Tuple[str, ...] = (
    "a photo of a {}.", "a photo of a small {}.", "a photo of a medium {}.", "a photo of a large {}.",
    "This is a photo of a {}.", "This is a photo of a small {}.", "This is a photo of a medium {}.",
    "This is a photo of a large {}.", "a {} in the scene.", "a photo of a {} in the scene.",
    "There is a {} in the scene.", "There is the {} in the scene.", "This is a {} in the scene.",
    "This is the {} in the scene.", "This is one {} in the scene.",
)

TEMPLATE_SETS: Dict[str, Tuple[str, ...]] = {"imagenet80": IMAGENET_80, "vild14": VILD_14, "zegclip15": ZEGCLIP_15}


def resolve_templates(templates: Union[str, Sequence[str]]) -> List[str]:
    """A set name of :data:`TEMPLATE_SETS`, or a list of templates and set names (a config list such as
    ``["imagenet80"]`` or ``["a photo of a {}.", "vild14"]``) -> list of templates, each with one ``{}``."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(
                f"Unknown template set '{templates}'; use one of {sorted(TEMPLATE_SETS)} or a list of "
                "templates such as ['a photo of a {}.']."
            )
        return list(TEMPLATE_SETS[templates])
    result = [t for entry in templates
              for t in (TEMPLATE_SETS[entry] if isinstance(entry, str) and entry in TEMPLATE_SETS else [entry])]
    if not result:
        raise ValueError("The list of prompt templates is empty; give at least one template with '{}'.")
    bad = [t for t in result if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise ValueError(f"Every prompt template must contain '{{}}' exactly once; these do not: {bad[:3]}.")
    return result
