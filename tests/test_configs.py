"""Every config in configs/ builds a model (the tiny random CLIP swapped in for ViT-B/16) and sets only keys
its method reads; moved keys are answered with their new names."""
import contextlib
import glob
import os
import re
from unittest import mock

import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from ldvc_d2 import add_ldvc_config
from ldvc_d2.config import MOVED_KEYS, load_config_file, merge_overrides, validate_config
from ldvc_d2.utils.config_reads import ReadRecordingCfgNode, recorded_reads, set_keys
from tests.conftest import REPO, tiny_cfg

CONFIGS = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                 if not os.path.basename(p).startswith("Base-"))


def test_configs_exist():
    assert {"configs/demo.yaml", "configs/voc.yaml", "configs/coco_stuff.yaml", "configs/context.yaml"} <= set(CONFIGS)


@contextlib.contextmanager
def _zero_random_fills():
    """Random weight fills become zero fills while a model is only built to check its keys and type: CPU
    random fills of the 60-90M-parameter students and proposal networks (C2S, DeOP) took ~1 s per config,
    most of this file's time; which keys are read does not depend on the values."""
    with mock.patch.object(torch.Tensor, "uniform_", lambda t, *a, **k: t.zero_()), \
            mock.patch.object(torch.Tensor, "normal_", lambda t, *a, **k: t.zero_()), \
            mock.patch.object(torch.Tensor, "erfinv_", lambda t, *a, **k: t):
        yield


@pytest.mark.parametrize("config", CONFIGS)
def test_config_builds_a_model(config):
    # DeOP's additive prompts enter blocks 0-5 of ViT-B/16; the tiny CLIP has 4 blocks
    # ProxyCLIP's DINO proxy is downloaded by timm: offline, the tiny CLIP's own keys stand in (the timm VFM is
    # tested in tests/test_training_free_attention.py)
    cfg = tiny_cfg(config, "MODEL.LDVC.LCTD.NUM_HEADS", "4", "MODEL.DEOP.VISUAL_PROMPT_LAYERS", "[0, 1, 2, 3]",
                   "MODEL.PROXYCLIP.VFM_ARCH", "clip_keys")
    runs = cfg.MODEL.META_ARCHITECTURE in ("LDVC", "ZegCLIP")  # these are also run below: real random weights
    with recorded_reads() as reads, (contextlib.nullcontext() if runs else _zero_random_fills()):
        model = build_model(ReadRecordingCfgNode(cfg))
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    # Every MODEL key the file (and its _BASE_ chain) sets is read while its method is built; MODEL.WEIGHTS and
    # WEIGHTS_PARTIAL_LOAD are read by the checkpointer, not the model.
    written = {k for k in set_keys(CfgNode.load_yaml_with_base(os.path.join(REPO, config))) if k.startswith("MODEL.")}
    unread = sorted(written - reads - {"MODEL.WEIGHTS", "MODEL.WEIGHTS_PARTIAL_LOAD"})
    assert not unread, f"{config} sets keys that {cfg.MODEL.META_ARCHITECTURE} never reads: {unread}"
    if not runs:  # the other methods have their own tests
        return
    # What the encoders run, not what they store: the first image block sees VISUAL_PROMPTS prompt tokens,
    # [CLS] and the 8x8 patches of a 64x64 input (the tiny CLIP's patch is 8); the first text block sees
    # TEXT_PROMPTS prompts written right after [SOS]; every decoder block runs once.
    seen = _block_inputs(model, cfg)
    assert seen["visual"] == [cfg.MODEL.CLIP.VISUAL_PROMPTS + 1 + 64]
    n_text = cfg.MODEL.CLIP.TEXT_PROMPTS
    if cfg.MODEL.SEGMENTOR.CLASS_EMBEDDINGS == "text" and n_text:
        prompts = model.backbone.text.prompts[0].detach()
        torch.testing.assert_close(seen["text"][:, 1:1 + n_text], prompts.expand(2, -1, -1))
        assert model.backbone.text.prompts.shape[1] == n_text
    if cfg.MODEL.CLIP.TEXT_TEMPLATES:
        from ldvc_d2.modeling.clip.templates import resolve_templates

        assert model.backbone.text.templates == resolve_templates(cfg.MODEL.CLIP.TEXT_TEMPLATES)
        assert not any(p.requires_grad for p in model.backbone.text.parameters())
    elif cfg.MODEL.SEGMENTOR.CLASS_EMBEDDINGS == "text":
        assert model.backbone.text.num_prompts == cfg.MODEL.CLIP.TEXT_PROMPTS
    else:
        assert not any(p.requires_grad for p in model.backbone.text.parameters())
    head = cfg.MODEL.SEM_SEG_HEAD.NAME
    assert type(model.sem_seg_head).__name__ == head
    if head == "LCTDHead":
        assert seen["decoder"] == [1] * cfg.MODEL.LDVC.LCTD.NUM_BLOCKS
        assert model.sem_seg_head.blocks[0].self_attn.topk == (
            cfg.MODEL.LDVC.LCTD.TOPK_WINDOWS if cfg.MODEL.LDVC.LCTD.SELF_ATTENTION == "lcsa" else None)
    else:
        assert seen["decoder"] == [1] * cfg.MODEL.ZEGCLIP.NUM_LAYERS
    assert len(model.self_training_classes) == (len(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).unseen_classes)
                                                if cfg.MODEL.SEGMENTOR.SELF_TRAINING else 0)
    if cfg.DATASETS.TRAIN:
        assert model.train_class_names, f"{config}: no training classes from {cfg.DATASETS.TRAIN}"
    if cfg.MODEL.SEGMENTOR.TRAINING_CLASSES == "all":
        assert model.calibration == 0.0


def _block_inputs(model, cfg):
    """Inputs of the first image and text blocks, and how often each decoder block runs, in one forward
    pass on a 64x64 image with two class names."""
    seen = {"visual": [], "text": None}
    visual = model.backbone.visual.visual.transformer.resblocks[0]
    handles = [visual.register_forward_pre_hook(lambda m, args: seen["visual"].append(args[0].shape[1]))]
    if cfg.MODEL.SEGMENTOR.CLASS_EMBEDDINGS == "text" and not cfg.MODEL.CLIP.TEXT_TEMPLATES:
        text = model.backbone.text.transformer.resblocks[0]
        handles.append(text.register_forward_pre_hook(lambda m, args: seen.__setitem__("text", args[0].detach())))
    head = model.sem_seg_head
    decoder = head.blocks if hasattr(head, "blocks") else head.layers
    calls = [0] * len(decoder)
    for i, block in enumerate(decoder):
        handles.append(block.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1)))
    try:
        with torch.no_grad():
            model.eval().logits(torch.zeros(1, 3, 64, 64), model.backbone.encode_text(["red circle", "blue star"]))
    finally:
        for h in handles:
            h.remove()
    return {**seen, "decoder": calls}


def test_paper_hyper_parameters():
    voc, coco = tiny_cfg("configs/voc.yaml"), tiny_cfg("configs/coco_stuff.yaml")
    assert (voc.MODEL.CLIP.VISUAL_PROMPTS, coco.MODEL.CLIP.VISUAL_PROMPTS) == (40, 100)
    assert (voc.SOLVER.MAX_ITER, coco.SOLVER.MAX_ITER) == (20000, 80000)
    for cfg in (voc, coco):
        assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == 2e-4 and cfg.SOLVER.WEIGHT_DECAY == 0.01
        assert cfg.SOLVER.WARMUP_ITERS == 1500 and cfg.SOLVER.POLY_LR_POWER == 0.9
        assert cfg.MODEL.CLIP.TEXT_PROMPTS == 6 and cfg.MODEL.LDVC.LCTD.NUM_BLOCKS == 2
        assert (cfg.MODEL.LDVC.LCTD.WINDOW_SIZE, cfg.MODEL.LDVC.LCTD.TOPK_WINDOWS) == (4, 16)
        assert cfg.MODEL.SEGMENTOR.LOSS.FOCAL_WEIGHT == 100 and cfg.MODEL.SEGMENTOR.LOSS.DICE_WEIGHT == 1
        assert tuple(cfg.INPUT.CROP.SIZE) == (512, 512) and cfg.MODEL.SEGMENTOR.INFERENCE.STRIDE == 426


def _cfg(path):
    return tiny_cfg(path)


def test_zegclip_baseline_settings():
    for path, prompts in (("configs/zegclip/voc.yaml", 10), ("configs/zegclip/coco_stuff.yaml", 100)):
        c = _cfg(path)
        assert c.MODEL.SEM_SEG_HEAD.NAME == "ZegCLIPHead" and c.MODEL.CLIP.VISUAL_PROMPTS == prompts
        assert c.MODEL.META_ARCHITECTURE == "ZegCLIP" and c.MODEL.CLIP.TEXT_PROMPTS == 0
        assert c.MODEL.CLIP.VISUAL_PROMPT_PROJECTION and c.MODEL.CLIP.VISUAL_FINAL_NORM
        assert (c.MODEL.ZEGCLIP.NUM_LAYERS, c.MODEL.ZEGCLIP.NUM_HEADS) == (3, 8)
    # ZegCLIP's text (get_embedding.ipynb): VOC one template without full stop, COCO-Stuff 15 averaged
    voc, coco = _cfg("configs/zegclip/voc.yaml"), _cfg("configs/zegclip/coco_stuff.yaml")
    assert voc.MODEL.CLIP.TEXT_TEMPLATE == "a photo of a {}" and not voc.MODEL.CLIP.TEXT_TEMPLATES
    from ldvc_d2.modeling.clip.templates import resolve_templates

    assert list(coco.MODEL.CLIP.TEXT_TEMPLATES) == ["zegclip15"]
    templates = resolve_templates(coco.MODEL.CLIP.TEXT_TEMPLATES)
    assert len(templates) == len(set(templates)) == 15 and all(t.count("{}") == 1 for t in templates)
    assert templates[0] == "a photo of a {}." and templates[-1] == "This is one {} in the scene."
    assert _cfg("configs/ablations/table4_components/baseline.yaml").MODEL.CLIP.TEXT_TEMPLATES == ["zegclip15"]


def test_ablation_tables_change_one_thing_each():
    base = _cfg("configs/coco_stuff.yaml")
    a = "configs/ablations/"
    for m in (8, 16, 32, 48):
        assert _cfg(f"{a}table8_topk/m{m}.yaml").MODEL.LDVC.LCTD.TOPK_WINDOWS == m
    for n in (2, 3, 4):
        assert _cfg(f"{a}table9_blocks/blocks{n}.yaml").MODEL.LDVC.LCTD.NUM_BLOCKS == n
    for name, v, t in (("language_only", 0, 6), ("vision_only", 100, 0), ("vision_language", 100, 6)):
        c = _cfg(f"{a}table5_prompts/{name}.yaml")
        assert (c.MODEL.CLIP.VISUAL_PROMPTS, c.MODEL.CLIP.TEXT_PROMPTS) == (v, t)
    assert _cfg(f"{a}table6_text_init/random.yaml").MODEL.CLIP.TEXT_PROMPT_INIT == "random"
    assert _cfg(f"{a}table6_text_init/hand_crafted.yaml").MODEL.CLIP.TEXT_PROMPT_INIT == "template"
    assert _cfg(f"{a}table4_components/vlpt_lctd_global.yaml").MODEL.LDVC.LCTD.SELF_ATTENTION == "global"
    assert _cfg(f"{a}table4_components/vlpt.yaml").MODEL.SEM_SEG_HEAD.NAME == "ZegCLIPHead"
    for head in ("zegclip", "lctd_global", "lctd"):
        for p, v, t in (("frozen", 0, 0), ("vpt", 100, 0), ("vlpt", 100, 6)):
            c = _cfg(f"{a}table7_decoders/{head}_{p}.yaml")
            assert c.MODEL.SEM_SEG_HEAD.NAME == ("ZegCLIPHead" if head == "zegclip" else "LCTDHead")
            assert c.MODEL.META_ARCHITECTURE == ("ZegCLIP" if head == "zegclip" else "LDVC")
            assert (c.MODEL.CLIP.VISUAL_PROMPTS, c.MODEL.CLIP.TEXT_PROMPTS) == (v, t)
            if head != "zegclip":
                assert c.MODEL.LDVC.LCTD.SELF_ATTENTION == ("global" if head == "lctd_global" else "lcsa")
            # ZegCLIP's visual-prompt cell is its own published baseline: its prompt variant and text
            zegclip_own = (head, p) == ("zegclip", "vpt")
            assert c.MODEL.CLIP.VISUAL_PROMPT_PROJECTION == c.MODEL.CLIP.VISUAL_FINAL_NORM == zegclip_own
            assert bool(c.MODEL.CLIP.TEXT_TEMPLATES) == (head == "zegclip" and p != "vlpt")
    own, baseline = _cfg(f"{a}table7_decoders/zegclip_vpt.yaml"), _cfg("configs/zegclip/coco_stuff.yaml")
    own.OUTPUT_DIR = baseline.OUTPUT_DIR
    assert own == baseline
    # everything else is the COCO-Stuff setting
    for c in (_cfg(f"{a}table8_topk/m8.yaml"), _cfg(f"{a}table7_decoders/zegclip_vlpt.yaml")):
        assert c.DATASETS == base.DATASETS and c.SOLVER.MAX_ITER == base.SOLVER.MAX_ITER


def test_transductive_and_fully_supervised_settings():
    for name, iters in (("voc", 10000), ("coco_stuff", 40000)):
        c = _cfg(f"configs/transductive/{name}.yaml")
        assert c.MODEL.SEGMENTOR.SELF_TRAINING and c.MODEL.SEGMENTOR.TRAINING_CLASSES == "all"
        assert c.SOLVER.MAX_ITER == iters and c.MODEL.WEIGHTS.startswith(f"output/{name}/model_")
        assert "zs_train_seen" in c.DATASETS.TRAIN[0]  # labels of unseen pixels are replaced, not used
        assert (c.MODEL.SEGMENTOR.LOSS.FOCAL_WEIGHT, c.MODEL.SEGMENTOR.LOSS.DICE_WEIGHT) == (100.0, 1.0)  # paper §4.1
    for name in ("voc", "coco_stuff"):
        c = _cfg(f"configs/{name}_fully_supervised.yaml")
        assert c.MODEL.SEGMENTOR.TRAINING_CLASSES == "all" and "full_train" in c.DATASETS.TRAIN[0]
        assert not c.MODEL.SEGMENTOR.SELF_TRAINING


def test_read_recording_sees_unread_keys():
    """The recorder behind the check above: a read key is recorded with its full name, an unread one is not."""
    cfg = ReadRecordingCfgNode(tiny_cfg("configs/demo.yaml"))
    with recorded_reads() as reads:
        assert cfg.MODEL.LDVC.LCTD.NUM_BLOCKS == 2 and cfg.MODEL.get("DEVICE") == "cpu"
        cfg.clone().SOLVER["BASE_LR"]
    assert reads == {"MODEL", "MODEL.LDVC", "MODEL.LDVC.LCTD", "MODEL.LDVC.LCTD.NUM_BLOCKS", "MODEL.DEVICE",
                     "SOLVER", "SOLVER.BASE_LR"}


@pytest.mark.parametrize("old,new", sorted(MOVED_KEYS.items()))
def test_moved_key_names_the_new_key(tmp_path, old, new):
    """A moved key (for a moved node: one of its leaves) in a config file or a command-line override fails with
    an error naming the file or the override, the old key and the new one; a fresh config has no old key."""
    cfg = get_cfg()
    add_ldvc_config(cfg)
    node, suffix = cfg, ""
    for part in new.split("."):
        node = node[part]
    while isinstance(node, CfgNode):  # a moved node: its first leaf
        first = next(iter(node))
        node, suffix = node[first], f"{suffix}.{first}"
    leaf_old, leaf_new = old + suffix, new + suffix
    *parents, leaf = leaf_old.split(".")
    text = "".join("  " * i + p + ":\n" for i, p in enumerate(parents)) + "  " * len(parents) + f"{leaf}: 1\n"
    path = tmp_path / "old.yaml"
    path.write_text(text)
    # a file names the moved node itself (yacs stops at the first key it cannot place), an override the leaf
    with pytest.raises(ValueError, match=rf"Config '{re.escape(str(path))}'.*: Key {old} was renamed to {new};"):
        load_config_file(cfg, str(path))
    with pytest.raises(ValueError, match=rf"Command-line override: Key {leaf_old} was renamed to {leaf_new}"):
        merge_overrides(cfg, [leaf_old, "1"])
    validate_config(cfg, training=False)  # the defaults pass the checks


def test_old_key_set_from_python_is_refused():
    cfg = get_cfg()
    add_ldvc_config(cfg)
    cfg.MODEL.LDVC.CLIP_MODEL = "ViT-L-14"  # yacs lets Python add keys; the run must not ignore it silently
    with pytest.raises(ValueError, match="MODEL.LDVC.CLIP_MODEL was moved to MODEL.CLIP.MODEL"):
        validate_config(cfg, training=False)


def test_unknown_override_is_a_named_error():
    cfg = get_cfg()
    add_ldvc_config(cfg)
    with pytest.raises(ValueError, match="Command-line override: Non-existent key: MODEL.CLIP.MODLE"):
        merge_overrides(cfg, ["MODEL.CLIP.MODLE", "ViT-B-16"])


def test_key_table_in_configs_readme_is_up_to_date():
    """configs/README.md lists every key with its default and readers, as tools/config_table.py writes it."""
    from tests.scripts import load_script

    tool = load_script("tools/config_table.py")
    text = open(os.path.join(REPO, "configs", "README.md")).read()
    assert tool.table() in text, "configs/README.md is out of date: run python tools/config_table.py"
