"""The CLIPtrase meta-architecture (training-free) on random-weight tiny CLIPs: scores against independent
computations (open_clip's own forward for the plain-CLIP row, the vote functions for the hard vote),
background words, the protocol line, training refused, and --eval-only through train_net.py."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from ldvc_d2.modeling.cliptrase import CLIPtrase, ClassEmbeddings, refine_with_regions, vote_hard
from ldvc_d2.modeling.cliptrase.correlation import denoise_correlation
from tests.conftest import REPO, TOY_CLASSES, tiny_cfg
from tests.scripts import run_train_net

BASE = "configs/cliptrase/shapes.yaml"


def _model(*opts) -> CLIPtrase:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(BASE, *opts)).eval()
    assert isinstance(model, CLIPtrase)
    return model


def _image(h=64, w=96, seed=0):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_plain_clip_row_equals_open_clip_patch_text_softmax():
    """ATTENTION_BRANCHES [] and CLUSTER False: softmax over classes of e^s · normalize(ln_post(tokens) @ proj)
    · t, computed here with open_clip's own VisionTransformer.forward (output_tokens)."""
    model = _model("MODEL.CLIPTRASE.ATTENTION_BRANCHES", "[]", "MODEL.CLIPTRASE.CLUSTER", "False")
    assert model.hooks == []
    image = _image(64, 64)  # the tiny tower's native 8×8 grid: no positional resize
    out = model([{"image": image, "class_names": TOY_CLASSES}])[0]["sem_seg"]

    tower = model.visual.visual
    tower.output_tokens = True
    try:
        x = (image.float() - model.pixel_mean) / model.pixel_std
        _, tokens = tower(x[None])
    finally:
        tower.output_tokens = False
    feats = F.normalize(tokens[0] @ tower.proj, dim=-1)  # hw×d
    text = model.text(TOY_CLASSES)
    logits = model.logit_scale * (feats @ text.T).T.reshape(len(TOY_CLASSES), 8, 8)
    logits = F.interpolate(logits[None], size=(64, 64), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, logits.softmax(dim=0), rtol=1e-5, atol=1e-6)


def test_hard_vote_scores_are_region_fractions_whose_argmax_is_the_majority():
    # a radius that puts every patch in clusters (a random tower has no structure to find)
    model = _model("MODEL.CLIPTRASE.DBSCAN_EPS", "3.0", "MODEL.CLIPTRASE.DBSCAN_MIN_SAMPLES", "2",
                   "MODEL.CLIPTRASE.DBSCAN_SCALE", "fixed")
    images = model.preprocess(_image(64, 64))
    text = model.text_features(TOY_CLASSES)
    out = model.visual(images, hooks=model.hooks)
    assert "correlation" in out and out["correlation"].shape == (1, 65, 65)
    weights = denoise_correlation(out["correlation"][0])
    logits = model.logit_scale * torch.einsum("dhw,cd->chw", out["dense"][0], text.weights)
    logits = F.interpolate(logits[None], size=(64, 64), mode="bilinear", align_corners=False)[0]
    vote = refine_with_regions(logits, weights, (8, 8), eps=3.0, min_samples=2, vote="hard")
    assert vote.regions is not None
    scores = model.window_scores(images, text)
    assert scores.shape == (len(TOY_CLASSES), 64, 64)
    assert torch.equal(scores.argmax(dim=0), vote_hard(logits.argmax(dim=0), vote.regions))
    torch.testing.assert_close(scores.sum(dim=0), torch.ones(64, 64))
    for r in vote.regions.unique():  # constant inside a region, = the share of its pixels per class
        inside = scores[:, vote.regions == r]
        assert torch.equal(inside, inside[:, :1].expand_as(inside))
        share = torch.bincount(logits.argmax(dim=0)[vote.regions == r], minlength=len(TOY_CLASSES)).float()
        torch.testing.assert_close(inside[:, 0], share / share.sum())

    no_cluster = _model("MODEL.CLIPTRASE.DBSCAN_EPS", "1e-6", "MODEL.CLIPTRASE.DBSCAN_SCALE", "fixed")
    torch.testing.assert_close(no_cluster.window_scores(images, text), logits.softmax(dim=0))  # K = 0 (T8)


def test_fractions_and_background_collapse_on_planted_labels():
    """_vote_fractions against a hand count, _collapse_probs: background = max over its words."""
    labels = torch.tensor([[0, 0, 1, 1], [0, 2, 1, 1]])
    regions = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    frac = CLIPtrase._vote_fractions(labels, regions, 3)
    torch.testing.assert_close(frac[:, 0, 0], torch.tensor([0.75, 0.0, 0.25]))
    torch.testing.assert_close(frac[:, 0, 3], torch.tensor([0.0, 1.0, 0.0]))
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(4, 1, 1)  # 3 classes (background = 0) + 1 extra word
    out = CLIPtrase._collapse_probs(probs, ClassEmbeddings(torch.zeros(4, 2), 3, 0))
    torch.testing.assert_close(out.flatten(), torch.tensor([0.4, 0.2, 0.3]))
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(4, 1, 1)
    assert int(CLIPtrase._pixel_labels(logits, ClassEmbeddings(torch.zeros(4, 2), 3, 0))) == 0


def test_background_words_expand_the_background_entry():
    words = ["background", "sky", "wall"]
    model = _model("MODEL.CLIPTRASE.BACKGROUND_WORDS", str(words))
    names = ["background", "red circle", "blue star"]
    emb = model.encode_text(names)
    assert (emb.num_classes, emb.background, emb.weights.shape[0]) == (3, 0, 5)
    torch.testing.assert_close(emb.weights, model.text(["background", "red circle", "blue star", "sky", "wall"]))
    scores = model([{"image": _image(), "class_names": names}])[0]["sem_seg"]
    assert scores.shape == (3, 64, 96)
    no_bg = model.encode_text(TOY_CLASSES)  # no background entry: nothing appended
    assert (no_bg.background, no_bg.weights.shape[0]) == (-1, len(TOY_CLASSES))


@pytest.mark.parametrize("scale,size,want", [
    ("grid", 128, (0.7 * 16 / 14, 4)),  # 16×16 patches: eps 0.7·√(256/196), min_samples round(3·256/196) = 4
    ("grid", 64, (0.7 * 8 / 14, 1)),  # 8×8: 0.7·√(64/196) = 0.4, round(0.98) = 1
    ("fixed", 128, (0.7, 3)),
])
def test_scaled_dbscan_settings_reach_dbscan(monkeypatch, scale, size, want):
    """What DBSCAN is called with: the grid-scaled eps / min_samples for the window's patch count (slide
    windows of 64 px included), or the config's values as given."""
    import sklearn.cluster  # clustering.cluster_patches imports DBSCAN from here when it runs

    calls = []
    real = sklearn.cluster.DBSCAN

    def spy(eps, min_samples, **kwargs):
        calls.append((eps, min_samples))
        return real(eps=eps, min_samples=min_samples, **kwargs)

    monkeypatch.setattr(sklearn.cluster, "DBSCAN", spy)
    model = _model("MODEL.CLIPTRASE.DBSCAN_SCALE", scale, "MODEL.SEGMENTOR.INFERENCE.MODE",
                   "whole" if size == 128 else "slide", "MODEL.SEGMENTOR.INFERENCE.CROP_SIZE", "64",
                   "MODEL.SEGMENTOR.INFERENCE.STRIDE", "48")
    out = model([{"image": _image(128, 128 if size == 128 else 100), "class_names": TOY_CLASSES}])[0]["sem_seg"]
    assert out.shape[0] == len(TOY_CLASSES) and out.min() >= 0 and out.max() <= 1
    assert calls and all(c[0] == pytest.approx(want[0]) and c[1] == want[1] for c in calls), calls
    if size == 64:
        assert len(calls) == 3 * 2  # 128×100 in 64 windows at stride 48: ceil(64/48)+1 rows × ceil(36/48)+1 columns


def test_training_is_a_clear_error_and_nothing_is_trainable():
    model = _model()
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    with pytest.raises(RuntimeError, match="training-free"):
        model([{"image": _image(), "sem_seg": torch.zeros(64, 96, dtype=torch.long)}])


def test_protocol_line_describes_the_method():
    cfg = tiny_cfg(BASE, "MODEL.CLIPTRASE.VOTE", "soft")
    line = CLIPtrase.describe_protocol(cfg)
    assert "CLIPtrase" in line and "soft vote" in line and "training-free" in line
    assert "re-weighting" not in line and "re-weighting" in CLIPtrase.describe_protocol(
        tiny_cfg("configs/cliptrase/voc20_224.yaml"))


def test_unknown_settings_are_errors_naming_the_key():
    with pytest.raises(ValueError, match="MODEL.CLIPTRASE.VOTE"):
        _model("MODEL.CLIPTRASE.VOTE", "majority")
    with pytest.raises(ValueError, match="MODEL.CLIPTRASE.ATTENTION_BRANCHES"):
        _model("MODEL.CLIPTRASE.ATTENTION_BRANCHES", "['q', 'x']")
    with pytest.raises(ValueError, match="DBSCAN_SCALE"):
        _model("MODEL.CLIPTRASE.DBSCAN_SCALE", "auto")


def test_eval_only_through_train_net_on_shapes_without_weights(tmp_path, monkeypatch):
    """The shapes world, a random tiny CLIP, no MODEL.WEIGHTS: metrics and the protocol line are written
    (train_net's parser and main, run in this process: tests/scripts.py run_train_net)."""
    out = tmp_path / "run"
    monkeypatch.setenv("DETECTRON2_DATASETS", os.environ.get("DETECTRON2_DATASETS", os.path.join(REPO, "datasets")))
    run_train_net("--config-file", os.path.join(REPO, BASE), "--eval-only", "MODEL.CLIP.PRETRAINED", "",
                  "OUTPUT_DIR", str(out), "DATALOADER.NUM_WORKERS", "0")
    metrics_file = next(out.rglob("sem_seg_metrics.json"))
    metrics = json.loads(metrics_file.read_text())
    text = json.dumps(metrics)
    assert "CLIPtrase" in text and "hIoU" in text


def _config_names():
    folder = os.path.join(REPO, "configs", "cliptrase")
    return sorted(f for f in os.listdir(folder) if f.endswith(".yaml") and not f.startswith("Base"))


@pytest.mark.parametrize("name", _config_names())
def test_every_config_names_a_registered_set_and_the_official_settings(name):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    cfg = tiny_cfg(f"configs/cliptrase/{name}")
    assert cfg.MODEL.META_ARCHITECTURE == "CLIPtrase" and not cfg.DATASETS.TRAIN
    dataset = cfg.DATASETS.TEST[0]
    assert dataset in DatasetCatalog.list() and MetadataCatalog.get(dataset).get("stuff_classes")
    c = cfg.MODEL.CLIPTRASE
    for size, eps, min_samples in ((224, 0.7, 3), (336, 1.1, 7)):
        if name.endswith(f"_{size}.yaml"):  # the official script's pairs, the crop set, whole-image pass
            assert (c.DBSCAN_EPS, c.DBSCAN_MIN_SAMPLES, c.DBSCAN_SCALE) == (eps, min_samples, "fixed")
            assert dataset.endswith(f"_crop{size}") and cfg.INPUT.MIN_SIZE_TEST == size
            assert cfg.MODEL.SEGMENTOR.INFERENCE.MODE == "whole" and cfg.TEST.MIOU_RULE == "cliptrase"
            assert c.IMAGE_LEVEL_REWEIGHT == name.startswith("voc20")
            # The official script's label maps (VOC21, COCO-Object) and its skip of images without
            # an object label (the three with-background sets).
            with_background = name.startswith(("voc21", "context60", "coco_object"))
            assert cfg.TEST.SKIP_NO_OBJECT_IMAGES == with_background
            assert (dataset == f"{name.rsplit('_', 1)[0]}_val_official_crop{size}") == name.startswith(
                ("voc21", "coco_object"))
    assert list(cfg.MODEL.PIXEL_MEAN) == ([123.675, 116.28, 103.53] if name.startswith("shapes")
                                          else [122.771, 116.746, 104.094])


def test_voc21_uses_the_official_names_and_background_words():
    from detectron2.data import MetadataCatalog

    model = build_model(tiny_cfg("configs/cliptrase/voc21_224.yaml")).eval()
    meta = MetadataCatalog.get("voc21_val_crop224")
    names = list(meta.prompt_class_names)
    assert "tv" in names and model.background_words == list(meta.background_names)
    emb = model.encode_text(names)
    assert emb.background == names.index("background")
    assert emb.weights.shape[0] == len(names) + len(meta.background_names) - 1


def test_open_vocabulary_without_weights_predictor_and_demo(tmp_path, caplog):
    """OpenVocabPredictor and demo/demo.py with a CLIPtrase config and no MODEL.WEIGHTS: no crash, no
    'untrained' warning, labels = argmax of the probabilities."""
    import importlib.util

    import numpy as np
    from PIL import Image

    from ldvc_d2.predictor import OpenVocabPredictor, load_config

    opts = ["MODEL.CLIP.PRETRAINED", ""]
    cfg = load_config(os.path.join(REPO, BASE), opts)
    torch.manual_seed(0)
    predictor = OpenVocabPredictor(cfg, input_format="RGB")
    assert "untrained" not in caplog.text
    rgb = _image(40, 60).permute(1, 2, 0).numpy()
    out = predictor(rgb, ["sky", "wall", "red circle"])
    assert out["sem_seg"].shape == (3, 40, 60) and torch.equal(out["labels"], out["sem_seg"].argmax(dim=0))

    spec = importlib.util.spec_from_file_location("ldvc_demo", os.path.join(REPO, "demo", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    rc = demo.main(["--config-file", os.path.join(REPO, BASE), "--input", str(tmp_path / "img.png"),
                    "--output", str(tmp_path / "out"), "--classes", "sky,wall,red circle", "--opts", *opts])
    assert rc == 0
    with Image.open(tmp_path / "out" / "img_labels.png") as im:
        assert np.asarray(im).shape == (40, 60)


def test_stage_maps_and_the_attention_tool(tmp_path):
    """Stage 1 = the pixel probabilities of the same model without clustering; stage 2 = its own scores;
    tools/visualize_attention.py draws them for a model without a decoder head."""
    import numpy as np
    from PIL import Image

    from tests.scripts import load_script

    opts = ("MODEL.CLIPTRASE.DBSCAN_EPS", "3.0", "MODEL.CLIPTRASE.DBSCAN_MIN_SAMPLES", "2",
            "MODEL.CLIPTRASE.DBSCAN_SCALE", "fixed")
    model, flat = _model(*opts), _model(*opts, "MODEL.CLIPTRASE.CLUSTER", "False")
    image = _image(64, 80)
    (label1, before), (label2, after) = model.stage_maps(image, TOY_CLASSES)
    assert "T5" in label1 and "vote" in label2
    torch.testing.assert_close(before, flat([{"image": image, "class_names": TOY_CLASSES}])[0]["sem_seg"])
    torch.testing.assert_close(after, model([{"image": image, "class_names": TOY_CLASSES}])[0]["sem_seg"])

    tool = load_script("tools/visualize_attention.py")
    Image.fromarray(np.asarray(image.permute(1, 2, 0))).save(tmp_path / "img.png")
    rc = tool.main(["--config-file", os.path.join(REPO, BASE), "--input", str(tmp_path / "img.png"),
                    "--classes", "red,blue", "--output", str(tmp_path / "maps.png"),
                    "--opts", "MODEL.CLIP.PRETRAINED", "", *opts])
    assert rc == 0
    with Image.open(tmp_path / "maps.png") as grid:
        assert grid.mode == "RGB"
