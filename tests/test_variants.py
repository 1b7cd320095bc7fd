"""Any head × any prompt variant (paper Tables 4-7): each combination builds, trains one step, and
exactly the parts that should train get gradients (CLIP itself never does)."""
import pytest
import torch
from detectron2.modeling import build_model

from tests.conftest import tiny_cfg

PROMPTS = {  # variant -> config overrides
    "frozen": ["MODEL.CLIP.VISUAL_PROMPTS", "0", "MODEL.CLIP.TEXT_PROMPTS", "0"],
    "vision_only": ["MODEL.CLIP.VISUAL_PROMPTS", "4", "MODEL.CLIP.TEXT_PROMPTS", "0"],
    "language_only": ["MODEL.CLIP.VISUAL_PROMPTS", "0", "MODEL.CLIP.TEXT_PROMPTS", "6"],
    "vision_language": ["MODEL.CLIP.VISUAL_PROMPTS", "4", "MODEL.CLIP.TEXT_PROMPTS", "6"],
    "vision_language_random_init": ["MODEL.CLIP.VISUAL_PROMPTS", "4", "MODEL.CLIP.TEXT_PROMPTS", "6",
                                    "MODEL.CLIP.TEXT_PROMPT_INIT", "random"],
    "zegclip_visual": ["MODEL.CLIP.VISUAL_PROMPTS", "4", "MODEL.CLIP.TEXT_PROMPTS", "0",
                       "MODEL.CLIP.VISUAL_PROMPT_PROJECTION", "True", "MODEL.CLIP.VISUAL_FINAL_NORM", "True"],
}
HEADS = {
    "lctd_lcsa": ["MODEL.SEM_SEG_HEAD.NAME", "LCTDHead"],
    "lctd_global": ["MODEL.SEM_SEG_HEAD.NAME", "LCTDHead", "MODEL.LDVC.LCTD.SELF_ATTENTION", "global"],
    "zegclip": ["MODEL.META_ARCHITECTURE", "ZegCLIP", "MODEL.SEM_SEG_HEAD.NAME", "ZegCLIPHead", "MODEL.ZEGCLIP.NUM_HEADS", "4"],
}


@pytest.mark.parametrize("prompts", list(PROMPTS))
@pytest.mark.parametrize("head", list(HEADS))
def test_every_head_with_every_prompt_variant_trains(head, prompts):
    cfg = tiny_cfg("configs/demo.yaml", *HEADS[head], *PROMPTS[prompts], "INPUT.CROP.SIZE", "(64, 64)")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    g = torch.Generator().manual_seed(0)
    batch = [{"image": torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8),
              "sem_seg": torch.randint(0, 16, (64, 64), generator=g)} for _ in range(2)]
    losses = model(batch)
    sum(losses.values()).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad <= trainable
    # in the backbone only prompts (and ZegCLIP's prompt projection / norm, and the V_j LayerNorms of
    # INTERMEDIATE_NORM "learnable", which only LCTD uses) train, never CLIP
    assert all(".prompt" in n or n.startswith("backbone.intermediate_norms.")
               for n in trainable if n.startswith("backbone."))
    assert any(n.startswith("backbone.intermediate_norms.") for n in trainable) == head.startswith("lctd")
    assert ("backbone.visual.prompts" in with_grad) == (cfg.MODEL.CLIP.VISUAL_PROMPTS > 0)
    assert ("backbone.text.prompts" in with_grad) == (cfg.MODEL.CLIP.TEXT_PROMPTS > 0)
    assert ("backbone.visual.prompt_proj.weight" in with_grad) == cfg.MODEL.CLIP.VISUAL_PROMPT_PROJECTION
    assert any(n.startswith("sem_seg_head.") for n in with_grad)
    head_module = model.sem_seg_head
    assert type(head_module).__name__ == cfg.MODEL.SEM_SEG_HEAD.NAME
    if head.startswith("lctd"):
        expected_topk = None if head == "lctd_global" else cfg.MODEL.LDVC.LCTD.TOPK_WINDOWS
        assert all(b.self_attn.topk == expected_topk for b in head_module.blocks)
