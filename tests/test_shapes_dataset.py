"""Tests of the synthetic ``shapes_zs`` world: split, determinism, label/image agreement, atomic
generation and Detectron2 registration."""
import json
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import ldvc_d2.data.datasets.shapes as shapes

NUM_CLASSES = len(shapes.CLASS_NAMES)
SMALL = dict(num_train=6, num_val=3)


@pytest.fixture(scope="module")
def default_root(tmp_path_factory) -> Path:
    """A datasets root holding the default-sized dataset (generated once for the module)."""
    root = tmp_path_factory.mktemp("datasets")
    shapes.generate_shapes_dataset(root)
    return root


def _load_split(root: Path, split: str):
    """(images, labels, records) of one split of ``root/shapes_zs``."""
    target = root / shapes.DATASET_DIRNAME
    records = json.loads((target / "index.json").read_text())["splits"][split]
    images = [np.asarray(Image.open(target / r["file_name"])) for r in records]
    labels = [np.asarray(Image.open(target / r["sem_seg_file_name"])) for r in records]
    return images, labels, records


def _file_bytes(target: Path) -> dict:
    return {str(p.relative_to(target)): p.read_bytes() for p in sorted(target.rglob("*"))
            if p.is_file()}


def test_split_is_compositional():
    seen, unseen = set(shapes.SEEN_CLASSES), set(shapes.UNSEEN_CLASSES)
    assert len(shapes.CLASS_NAMES) == len(shapes.COLORS) * len(shapes.SHAPES) == 16
    assert seen | unseen == set(range(NUM_CLASSES)) and not seen & unseen
    assert len(unseen) == 4
    seen_attrs = [shapes.CLASS_NAMES[k].split() for k in seen]
    for k in unseen:
        color, shape = shapes.CLASS_NAMES[k].split()
        assert any(c == color for c, _ in seen_attrs), f"colour of {shapes.CLASS_NAMES[k]} unseen"
        assert any(s == shape for _, s in seen_attrs), f"shape of {shapes.CLASS_NAMES[k]} unseen"
    # No unseen colour or shape repeats: every attribute has exactly one new combination.
    unseen_attrs = [shapes.CLASS_NAMES[k].split() for k in unseen]
    assert len({c for c, _ in unseen_attrs}) == len({s for _, s in unseen_attrs}) == 4
    assert len({tuple(c) for c in shapes.STUFF_COLORS}) == NUM_CLASSES


def test_captions():
    assert shapes.make_caption([0]) == "a red circle"
    assert shapes.make_caption([0, 11, 11]) == "a red circle and two blue stars"
    assert (shapes.make_caption([5, 0, 5, 14])
            == "two green squares, a red circle and a yellow triangle")


def test_scene_is_deterministic():
    a = shapes.render_scene(np.random.default_rng(3), [0, 7, 9], 64)
    b = shapes.render_scene(np.random.default_rng(3), [0, 7, 9], 64)
    c = shapes.render_scene(np.random.default_rng(4), [0, 7, 9], 64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def test_generation_is_deterministic(tmp_path):
    first = shapes.generate_shapes_dataset(tmp_path / "a", seed=0, **SMALL)
    again = shapes.generate_shapes_dataset(tmp_path / "b", seed=0, **SMALL)
    other = shapes.generate_shapes_dataset(tmp_path / "c", seed=1, **SMALL)
    files = _file_bytes(first)
    assert len(files) == 2 * 9 + 1
    assert files == _file_bytes(again)
    other_files = _file_bytes(other)
    assert files.keys() == other_files.keys()
    assert all(files[k] != other_files[k] for k in files if k.startswith("images/"))


def test_labels_are_valid(default_root):
    for split, count in (("train", 400), ("val", 100)):
        images, labels, records = _load_split(default_root, split)
        assert len(images) == count
        for image, label, rec in zip(images, labels, records):
            assert image.shape == (128, 128, 3) and image.dtype == np.uint8
            assert label.shape == image.shape[:2] and label.dtype == np.uint8
            values = set(np.unique(label).tolist())
            assert values <= set(range(NUM_CLASSES)) | {255}
            # The index lists exactly the classes visible in the label; the caption names them.
            assert values - {255} == set(rec["objects"]), rec["image_id"]
            assert all(shapes.CLASS_NAMES[k] in rec["caption"] for k in rec["objects"])


def test_every_class_in_train_and_val(default_root):
    for split in ("train", "val"):
        _, labels, _ = _load_split(default_root, split)
        present = set(np.unique(np.concatenate([lab.ravel() for lab in labels])).tolist())
        assert set(range(NUM_CLASSES)) <= present, f"{split} misses {set(range(16)) - present}"


def test_labelled_pixels_have_the_class_colour(default_root):
    images, labels, _ = _load_split(default_root, "val")
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float32)
    label = np.concatenate([lab.ravel() for lab in labels])
    palette = np.array([shapes.COLOR_RGB[c] for c in shapes.COLORS], np.float32)
    nearest = np.linalg.norm(pixels[:, None] - palette[None], axis=2).argmin(axis=1)
    for k in range(NUM_CLASSES):
        color = k // len(shapes.SHAPES)
        assert shapes.CLASS_NAMES[k].startswith(shapes.COLORS[color])
        mine = label == k
        mean = pixels[mine].mean(axis=0)
        assert np.linalg.norm(palette - mean, axis=1).argmin() == color, (k, mean)
        assert (nearest[mine] == color).mean() > 0.97, shapes.CLASS_NAMES[k]
    # Backgrounds are muted: almost no background pixel is strongly saturated.
    hsv = cv2.cvtColor(pixels[label == 255][None].astype(np.uint8), cv2.COLOR_RGB2HSV)[0]
    assert (hsv[:, 1] > 128).mean() < 0.02


@pytest.mark.parametrize("class_index", range(16))
def test_single_object_has_its_shape(class_index):
    """Geometry per shape: fill of the enclosing circle, and convexity (the star is not convex)."""
    expected_fill = {"circle": (0.9, 1.01), "square": (0.55, 0.72), "triangle": (0.33, 0.5),
                     "star": (0.3, 0.5)}
    shape = shapes.SHAPES[class_index % len(shapes.SHAPES)]
    rng = np.random.default_rng(class_index)
    for _ in range(3):
        image, label, caption = shapes.sample_object_image(rng, class_index, size=128)
        assert caption == f"a {shapes.CLASS_NAMES[class_index]}"
        assert image.shape == (128, 128, 3) and label.shape == (128, 128)
        assert set(np.unique(label).tolist()) == {class_index, 255}
        mask = (label == class_index).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        assert len(contours) == 1
        area = float(mask.sum())
        _, radius = cv2.minEnclosingCircle(contours[0])
        fill = area / (np.pi * (radius + 0.5) ** 2)
        solidity = area / cv2.contourArea(cv2.convexHull(contours[0]))
        lo, hi = expected_fill[shape]
        assert lo < fill < hi, (shape, fill)
        assert (solidity < 0.8) == (shape == "star"), (shape, solidity)


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) > 4:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    real_render = shapes.render_scene
    monkeypatch.setattr(shapes, "render_scene", failing_render)
    with pytest.raises(KeyboardInterrupt):
        shapes.generate_shapes_dataset(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_killed_run_leaves_no_dataset(tmp_path, monkeypatch):
    """SIGKILL mid-generation (in a forked child): no dataset appears, the next run cleans up."""
    real_render = shapes.render_scene

    def render_then_die(*args, **kwargs):
        render_then_die.calls += 1
        if render_then_die.calls > 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_render(*args, **kwargs)

    render_then_die.calls = 0
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            monkeypatch.setattr(shapes, "render_scene", render_then_die)
            shapes.generate_shapes_dataset(tmp_path, **SMALL)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not (tmp_path / "shapes_zs").exists()
    assert [p.name for p in tmp_path.iterdir()] == [f".shapes_zs.tmp-{pid}"]
    target = shapes.generate_shapes_dataset(tmp_path, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["shapes_zs"]
    assert len(list((target / "images" / "val").glob("*.png"))) == SMALL["num_val"]


def test_leftovers_of_killed_runs_are_ignored_and_removed(tmp_path):
    # A hard-killed run (its process is gone) left a temp dir; a partial target has no index.json.
    leftover = tmp_path / ".shapes_zs.tmp-999999999"
    (leftover / "images" / "train").mkdir(parents=True)
    (leftover / "images" / "train" / "000000.png").write_bytes(b"junk")
    (tmp_path / "shapes_zs" / "images").mkdir(parents=True)
    target = shapes.generate_shapes_dataset(tmp_path, **SMALL)
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes_zs"]
    assert (target / "index.json").is_file()
    assert len(list((target / "labels" / "train").glob("*.png"))) == SMALL["num_train"]


def test_regenerates_when_parameters_differ_or_files_are_missing(tmp_path, caplog):
    target = shapes.generate_shapes_dataset(tmp_path, seed=0, **SMALL)
    stamp = (target / "index.json").stat().st_mtime_ns
    assert shapes.generate_shapes_dataset(tmp_path, seed=0, **SMALL) == target
    assert (target / "index.json").stat().st_mtime_ns == stamp  # complete: not regenerated
    before = _file_bytes(target)
    with caplog.at_level("INFO"):
        shapes.generate_shapes_dataset(tmp_path, seed=1, **SMALL)
    assert "was generated with" in caplog.text
    assert json.loads((target / "index.json").read_text())["params"]["seed"] == 1
    assert _file_bytes(target) != before
    (target / "labels" / "val" / "000001.png").unlink()
    caplog.clear()
    with caplog.at_level("INFO"):
        shapes.generate_shapes_dataset(tmp_path, seed=1, **SMALL)
    assert "is missing" in caplog.text
    assert (target / "labels" / "val" / "000001.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes_zs"]


def test_registration(default_root, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(default_root))
    expected = {"shapes_zs_train_seen": (400, 12, 4), "shapes_zs_val": (100, 12, 4),
                "shapes_full_train": (400, 16, 0)}
    for name, (count, num_seen, num_unseen) in expected.items():
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == count
        for d in dicts:
            assert set(d) == {"file_name", "sem_seg_file_name", "height", "width", "image_id"}
            assert Path(d["file_name"]).is_file() and Path(d["sem_seg_file_name"]).is_file()
            assert (d["height"], d["width"]) == (128, 128)
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == list(shapes.CLASS_NAMES)
        assert len(meta.seen_classes) == num_seen and len(meta.unseen_classes) == num_unseen
        assert sorted(meta.seen_classes + meta.unseen_classes) == list(range(NUM_CLASSES))
        assert meta.ignore_label == 255 and meta.evaluator_type == "zero_shot_sem_seg"
        assert len(meta.stuff_colors) == NUM_CLASSES
    assert MetadataCatalog.get("shapes_zs_val").unseen_classes == shapes.UNSEEN_CLASSES
    assert shapes.register_shapes() == []  # already registered: a no-op, no error


def test_registration_is_lazy_and_takes_a_root(tmp_path, default_root):
    lazy_root = tmp_path / "lazy"
    names = shapes.register_shapes(lazy_root, prefix="lazy_test_")
    assert names == ["lazy_test_shapes_zs_train_seen", "lazy_test_shapes_zs_val",
                     "lazy_test_shapes_full_train"]
    assert not lazy_root.exists()  # nothing is generated until the dataset is loaded
    shapes.register_shapes(default_root, prefix="explicit_test_")
    dicts = DatasetCatalog.get("explicit_test_shapes_zs_val")
    assert len(dicts) == 100 and dicts[0]["file_name"].startswith(str(default_root))
