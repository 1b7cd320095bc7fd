"""The tiny CLIP shipped with the package : written and read back exactly, the token
embedding redrawn as pretraining drew it, first use without pretraining, and the shipped file itself
(its weights give the zero-shot accuracy its metadata claims)."""
import dataclasses
import glob
import json
import logging
import os

import numpy as np
import open_clip
import pytest
import torch
from safetensors import safe_open

from ldvc_d2.benchmarks.shapes import cache, shipped, tiny_clip
from ldvc_d2.benchmarks.shapes.tiny_clip import PretrainConfig
from ldvc_d2.benchmarks.shapes.world import CLASS_NAMES, make_caption
from ldvc_d2.modeling.clip import build_clip_model
from tests.conftest import REPO
from tests.scripts import load_script

TINY = PretrainConfig(steps=2, batch_size=4, warmup_steps=1)


def _fake_pretrained(path, cfg):
    """A checkpoint as pretrain_tiny_clip writes it: the model pretraining starts from (same seed), every
    trainable tensor then changed, the token embedding kept (it is frozen in pretraining)."""
    torch.manual_seed(cfg.seed)
    model, _ = tiny_clip._build(cfg.image_size)
    state = model.state_dict()
    gen = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if key != "token_embedding.weight" and value.is_floating_point():
            value.add_(torch.randn(value.shape, generator=gen))
    torch.save({"state_dict": state, "ldvc_tiny_clip": {"accuracy": 50.0, "config": dataclasses.asdict(cfg)}}, path)
    return state


def test_write_then_read_restores_every_tensor_exactly(tmp_path):
    state = _fake_pretrained(tmp_path / "p.pt", TINY)
    meta = shipped.write_shipped(str(tmp_path / "p.pt"), str(tmp_path / "s.safetensors"), TINY)
    assert meta["digest"] == TINY.digest() and json.loads(meta["metrics"])["accuracy"] == 50.0
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        assert "token_embedding.weight" not in f.keys()  # regenerated, not stored (80% of the file)
    got, metrics = shipped.read_shipped(tmp_path / "s.safetensors", TINY)
    assert metrics["accuracy"] == 50.0
    assert sorted(got) == sorted(state)
    for key in state:
        assert torch.equal(got[key], state[key]), key
    assert (tmp_path / "s.safetensors").stat().st_size < 0.3 * (tmp_path / "p.pt").stat().st_size


def test_another_drawn_embedding_keeps_the_pretraining_vocabulary(tmp_path, monkeypatch, caplog):
    """On a machine that draws another embedding for the seed (a CPU without AVX2, another torch), the shapes
    world's words keep their pretraining rows (stored), the others take the new draw, the log says so, and
    every caption and class prompt embeds bit for bit as with the pretrained checkpoint."""
    state = _fake_pretrained(tmp_path / "p.pt", TINY)
    shipped.write_shipped(str(tmp_path / "p.pt"), str(tmp_path / "s.safetensors"), TINY)
    other = torch.randn(state["token_embedding.weight"].shape)
    monkeypatch.setattr(shipped, "_initial_token_embedding", lambda cfg: other.clone())
    with caplog.at_level(logging.INFO, logger="ldvc_d2.benchmarks.shapes.shipped"):
        got, _ = shipped.read_shipped(tmp_path / "s.safetensors", TINY)
    assert "another random token embedding" in caplog.text
    tokens = got["token_embedding.weight"]
    vocab = shipped.pretraining_vocabulary(open_clip.get_tokenizer("LDVC-Tiny"))
    assert torch.equal(tokens[vocab], state["token_embedding.weight"][vocab])
    rest = torch.ones(len(tokens), dtype=torch.bool)
    rest[vocab] = False
    assert torch.equal(tokens[rest], other[rest])
    texts = [t.format(make_caption([a, b])) for t in tiny_clip.CAPTION_TEMPLATES for a, b in [(0, 5), (7, 7)]]
    texts += [tiny_clip.EVAL_TEMPLATE.format(c) for c in CLASS_NAMES]
    tokenizer = open_clip.get_tokenizer("LDVC-Tiny")
    features = []
    for weights in (state, got):
        model, _ = tiny_clip._build(64)
        model.load_state_dict(weights)
        with torch.no_grad():
            features.append(model.eval().encode_text(tokenizer(texts)))
    assert torch.equal(features[0], features[1])


def test_pretraining_vocabulary_covers_every_caption():
    tokenizer = open_clip.get_tokenizer("LDVC-Tiny")
    vocab = set(shipped.pretraining_vocabulary(tokenizer).tolist())
    rng = np.random.default_rng(0)
    _, captions = tiny_clip.sample_batch(rng, 64, 64)
    assert set(tokenizer(captions).unique().tolist()) <= vocab
    assert {49406, 49407, 0} <= vocab  # start, end, padding


def test_write_refuses_another_recipe_or_embedding(tmp_path):
    _fake_pretrained(tmp_path / "p.pt", TINY)
    with pytest.raises(ValueError, match="pretrained with"):
        shipped.write_shipped(str(tmp_path / "p.pt"), str(tmp_path / "s.safetensors"), PretrainConfig())
    saved = torch.load(tmp_path / "p.pt", weights_only=True)
    saved["state_dict"]["token_embedding.weight"].add_(1.0)
    torch.save(saved, tmp_path / "q.pt")
    with pytest.raises(ValueError, match="token embedding"):
        shipped.write_shipped(str(tmp_path / "q.pt"), str(tmp_path / "s.safetensors"), TINY)
    assert not (tmp_path / "s.safetensors").exists()


def test_damaged_or_foreign_files_are_named(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(RuntimeError, match="bad.safetensors.*damaged"):
        shipped.read_shipped(bad, TINY)
    _fake_pretrained(tmp_path / "p.pt", TINY)
    shipped.write_shipped(str(tmp_path / "p.pt"), str(tmp_path / "s.safetensors"), TINY)
    with pytest.raises(ValueError, match="not a shipped tiny CLIP of recipe"):
        shipped.read_shipped(tmp_path / "s.safetensors", PretrainConfig())


def test_first_use_writes_the_shipped_checkpoint_without_pretraining(tmp_path, monkeypatch):
    _fake_pretrained(tmp_path / "p.pt", TINY)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "assets")
    shipped.write_shipped(str(tmp_path / "p.pt"), str(shipped.shipped_path(TINY)), TINY)
    monkeypatch.setattr(cache, "pretrain_tiny_clip", lambda *a, **k: pytest.fail("pretrained"))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    path = cache.ensure_tiny_clip(str(tmp_path / "cache"), TINY)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG is untouched (LDVC's init follows)
    saved = torch.load(path, weights_only=True)
    want = torch.load(tmp_path / "p.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved["state_dict"][k], want[k]) for k in want)
    assert saved["ldvc_tiny_clip"]["source"] == shipped.shipped_path(TINY).name
    # a cached checkpoint (e.g. pretrained afresh by tools/pretrain_tiny_clip.py) is used first
    torch.save({"state_dict": want, "ldvc_tiny_clip": {"source": "mine"}}, path)
    assert cache.ensure_tiny_clip(str(tmp_path / "cache"), TINY) == path
    assert torch.load(path, weights_only=True)["ldvc_tiny_clip"]["source"] == "mine"


def test_the_shipped_checkpoint_is_the_default_recipes_and_gives_its_accuracy(tmp_path, monkeypatch):
    """The package's file: present for the quick start's recipe (re-ship it when the world or the recipe
    changes: `python tools/pretrain_tiny_clip.py --force --ship`), small, and its weights (token embedding
    redrawn, or its vocabulary rows on a machine that draws differently) classify held-out shapes as its
    metadata says."""
    cfg = PretrainConfig()
    path = shipped.shipped_path(cfg)
    assert path.is_file(), f"no shipped tiny CLIP for the default recipe ({path}): run tools/pretrain_tiny_clip.py --ship"
    assert path.stat().st_size < 8 * 2**20
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    claimed = json.loads(meta["metrics"])
    assert claimed["config"] == dataclasses.asdict(cfg)
    monkeypatch.setattr(cache, "pretrain_tiny_clip", lambda *a, **k: pytest.fail("pretrained"))
    model, _ = build_clip_model("LDVC-Tiny", "shapes", cache_dir=str(tmp_path))
    got = tiny_clip.zero_shot_accuracy(model, open_clip.get_tokenizer("LDVC-Tiny"))
    # 400 held-out images; other thread counts or CPUs may flip a near-tie (one image = 0.25 points)
    assert abs(got["accuracy"] - claimed["accuracy"]) <= 1.0, (got, claimed)
    assert got["accuracy"] > 8 * got["chance"]


def test_tool_pretrains_into_the_cache_compares_and_ships(tmp_path, monkeypatch, capsys):
    tool = load_script("tools/pretrain_tiny_clip.py")
    monkeypatch.setitem(tiny_clip.TINY_CLIP_RECIPES, "tiny", TINY)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "assets")
    assert tool.main(["--recipe", "tiny", "--cache-dir", str(tmp_path / "cache")]) == 0
    cached = cache.cache_path(str(tmp_path / "cache"), TINY)
    first = torch.load(cached, weights_only=True)["ldvc_tiny_clip"]
    assert f"all {first['accuracy']:5.1f}" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an existing checkpoint is kept unless --force
        tool.main(["--recipe", "tiny", "--cache-dir", str(tmp_path / "cache")])
    assert "--force replaces it" in capsys.readouterr().err
    stale = shipped.SHIPPED_DIR / "LDVC-Tiny-shapes-0000000000.safetensors"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"an older digest's file")
    assert tool.main(["--recipe", "tiny", "--from", cached, "--ship"]) == 0
    assert not stale.exists()
    out = capsys.readouterr().out
    assert "Shipped:" in out and shipped.shipped_path(TINY).is_file()
    state, metrics = shipped.read_shipped(shipped.shipped_path(TINY), TINY)
    want = torch.load(cached, weights_only=True)["state_dict"]
    assert metrics["accuracy"] == first["accuracy"] and all(torch.equal(state[k], want[k]) for k in want)
    with pytest.raises(SystemExit):
        tool.main(["--recipe", "nope"])
    with pytest.raises(SystemExit):
        tool.main(["--recipe", "tiny", "--from", cached, "--force"])
    assert "--from names an existing checkpoint" in capsys.readouterr().err


SHAPES_CONFIGS = ["configs/demo.yaml"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if ("shapes" in os.path.relpath(p, REPO)) and not os.path.basename(p).startswith("Base-"))


@pytest.mark.parametrize("config", SHAPES_CONFIGS)
def test_every_token_a_shapes_config_encodes_is_in_the_pretraining_vocabulary(config):
    """The token ids that reach the CLIP token embedding when a shapes config's model embeds its classes (train
    and test vocabularies, with its templates and prompts) are all of the pretraining vocabulary: in the
    fallback of read_shipped they keep their pretraining vectors, and none is an untrained word."""
    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    cfg = tiny_cfg(config, "MODEL.LDVC.LCTD.NUM_HEADS", "4", "MODEL.DEOP.VISUAL_PROMPT_LAYERS", "[0, 1, 2, 3]")
    model = build_model(cfg).eval()
    if not hasattr(model, "text_features"):
        pytest.skip(f"{type(model).__name__} embeds no class names")
    ids = []
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings == 49408]
    if not embeddings:
        pytest.skip(f"{type(model).__name__} embeds classes without a CLIP text tower here")
    for module in embeddings:
        module.register_forward_hook(lambda m, inputs, out: ids.append(inputs[0].flatten()))
    with torch.no_grad():
        for names in (model.train_class_names, model.test_class_names):
            if names:
                model.text_features(list(names))
    assert ids, f"{config}: no class text reached a token embedding"
    vocab = set(shipped.pretraining_vocabulary(open_clip.get_tokenizer("LDVC-Tiny")).tolist())
    outside = set(torch.cat(ids).tolist()) - vocab
    assert not outside, f"{config}: tokens {sorted(outside)} are not in the tiny CLIP's pretraining vocabulary"


def test_only_current_recipes_are_shipped():
    assert shipped.stale_shipped_files() == [], "remove older shipped files (tools/pretrain_tiny_clip.py --ship does)"


def test_a_cpu_without_avx2_gets_the_same_shapes_vectors(tmp_path):
    """torch's normal_ takes another code path without AVX2 (ATEN_CPU_CAPABILITY=default here stands in for
    ARM): the redrawn embedding's SHA differs there, and the file's vocabulary rows make the rows every shapes
    text reads equal to this machine's, which redraws the embedding pretraining used."""
    import subprocess
    import sys

    script = (
        "import sys, torch; from ldvc_d2.benchmarks.shapes import shipped as s;"
        "from ldvc_d2.benchmarks.shapes.tiny_clip import PretrainConfig;"
        "state, _ = s.read_shipped(s.shipped_path(PretrainConfig()));"
        "torch.save({'capability': torch.backends.cpu.get_cpu_capability(), 'token': state['token_embedding.weight']},"
        " sys.argv[1])")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "t.pt")], check=True, cwd=REPO, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    other = torch.load(tmp_path / "t.pt", weights_only=True)
    assert other["capability"] == "DEFAULT"
    here, _ = shipped.read_shipped(shipped.shipped_path(PretrainConfig()))
    vocab = shipped.pretraining_vocabulary(open_clip.get_tokenizer("LDVC-Tiny"))
    assert torch.equal(other["token"][vocab], here["token_embedding.weight"][vocab])
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":  # the two draws differ outside the vocabulary
        assert not torch.equal(other["token"], here["token_embedding.weight"])
