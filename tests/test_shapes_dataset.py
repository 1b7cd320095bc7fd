"""Tests of the synthetic ``shapes_zs`` world: split, captions, patterns, determinism, label/image
agreement, atomic generation and Detectron2 registration."""
import json
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import ldvc_d2.benchmarks.shapes.dataset as shapes

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
    assert len(shapes.CLASS_NAMES) == len(shapes.COLORS) * len(shapes.PATTERNS) == 16
    assert seen | unseen == set(range(NUM_CLASSES)) and not seen & unseen
    assert len(unseen) == 4
    for k, name in enumerate(shapes.CLASS_NAMES):  # index = colour * 4 + pattern
        assert name == f"{shapes.PATTERNS[k % 4]} {shapes.COLORS[k // 4]} shape"
    seen_attrs = [shapes.CLASS_NAMES[k].split()[:2] for k in seen]
    for k in unseen:
        pattern, color, _ = shapes.CLASS_NAMES[k].split()
        assert any(c == color for _, c in seen_attrs), shapes.CLASS_NAMES[k]
        assert any(p == pattern for p, _ in seen_attrs), shapes.CLASS_NAMES[k]
    # No unseen colour or pattern repeats: every attribute has exactly one new combination.
    unseen_attrs = [shapes.CLASS_NAMES[k].split()[:2] for k in unseen]
    assert len({c for _, c in unseen_attrs}) == len({p for p, _ in unseen_attrs}) == 4
    assert len({tuple(c) for c in shapes.STUFF_COLORS}) == NUM_CLASSES


def test_captions():
    assert shapes.make_caption([0]) == "a plain red shape"
    assert (shapes.make_caption([0, 11, 11])
            == "a plain red shape and two checkered blue shapes")
    assert (shapes.make_caption([5, 0, 5, 14])
            == "two striped green shapes, a plain red shape and a dotted yellow shape")
    assert shapes.make_caption([9, 9, 9]) == "three striped blue shapes"


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
    """Objects' mean colour is the class colour; every pixel (light or dark pattern tone) has the
    class hue; backgrounds are unsaturated."""
    images, labels, _ = _load_split(default_root, "val")
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float32)
    label = np.concatenate([lab.ravel() for lab in labels])
    palette = np.array([shapes.COLOR_RGB[c] for c in shapes.COLORS], np.float32)
    hsv = cv2.cvtColor(pixels[None].astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)[0].astype(np.float32)
    palette_hue = cv2.cvtColor(palette[None].astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)[0, :, 0]
    hue_dist = np.abs((hsv[:, :1] - palette_hue[None] + 128) % 256 - 128)  # 256 = 360°
    nearest_hue = hue_dist.argmin(axis=1)
    for k in range(NUM_CLASSES):
        color = k // len(shapes.PATTERNS)
        mine = label == k
        mean = pixels[mine].mean(axis=0)
        assert np.linalg.norm(palette - mean, axis=1).argmin() == color, (k, mean)
        assert (nearest_hue[mine] == color).mean() > 0.97, shapes.CLASS_NAMES[k]
        assert np.median(hsv[mine, 1]) > 150, shapes.CLASS_NAMES[k]  # saturated, both tones
    # Backgrounds are muted: almost no background pixel is strongly saturated.
    assert (hsv[label == 255, 1] > 128).mean() < 0.02


def _pattern_stats(image: np.ndarray, label: np.ndarray, k: int) -> dict:
    """Texture statistics of the object of class ``k``, measured on its brightness along the class
    colour, inside the object (eroded, so outline anti-aliasing does not count):

    * contrast: std of the high-passed brightness (shading and noise removed) / mean brightness
    * light: share of pixels nearer the light tone than the dark one
    * oriented: share of the pattern's spectral power (periods ~3–12 px) within ±15° of the
      strongest direction: ~1 for stripes, ~0.5 for patterns periodic along two axes
    * period: the strongest period in px
    """
    mask = (label == k).astype(np.uint8)
    inner = cv2.erode(mask, np.ones((5, 5), np.uint8)).astype(bool)
    direction = np.array(shapes.COLOR_RGB[shapes.COLORS[k // 4]], np.float32)
    brightness = image.astype(np.float32) @ (direction / np.linalg.norm(direction))
    sharp = cv2.GaussianBlur(brightness, (0, 0), 0.7)[cv2.erode(mask, np.ones((3, 3))) > 0]
    lo, hi = np.percentile(sharp, [5, 95])
    smooth = cv2.GaussianBlur(brightness, (0, 0), 1.0)
    high = smooth - cv2.GaussianBlur(smooth, (0, 0), 5.0)
    ys, xs = np.nonzero(inner)
    crop = (high * inner)[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    power = np.abs(np.fft.fft2(crop, s=(128, 128))) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128), indexing="ij")
    radial, angle = np.hypot(fx, fy), np.arctan2(fy, fx) % np.pi
    band = (radial > 0.08) & (radial < 0.35)
    peak = np.argmax(np.where(band, power, 0))
    off = np.abs((angle - angle.flat[peak] + np.pi / 2) % np.pi - np.pi / 2)
    return {"contrast": high[inner].std() / smooth[inner].mean(),
            "light": (sharp > (lo + hi) / 2).mean(),
            "oriented": power[band & (off < np.pi / 12)].sum() / power[band].sum(),
            "period": 1.0 / radial.flat[peak]}


@pytest.mark.parametrize("class_index", range(16))
def test_single_object_has_its_pattern(class_index):
    """Per pattern: plain is flat; striped is periodic along one direction; dotted and checkered
    along two; dotted is mostly the light tone (small dark dots), checkered half and half."""
    pattern = shapes.PATTERNS[class_index % 4]
    rng = np.random.default_rng(class_index)
    for _ in range(6):
        image, label, caption = shapes.sample_object_image(rng, class_index, size=128)
        assert caption == f"a {shapes.CLASS_NAMES[class_index]}"
        assert image.shape == (128, 128, 3) and label.shape == (128, 128)
        assert set(np.unique(label).tolist()) == {class_index, 255}
        contours, _ = cv2.findContours((label == class_index).astype(np.uint8),
                                       cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        assert len(contours) == 1
        stats = _pattern_stats(image, label, class_index)
        if pattern == "plain":
            assert stats["contrast"] < 0.07, stats
            continue
        assert stats["contrast"] > 0.09, stats
        assert 5.5 < stats["period"] < 9.0, stats
        if pattern == "striped":
            assert stats["oriented"] > 0.7, stats
        else:
            assert stats["oriented"] < 0.6, stats
        if pattern == "dotted":
            assert stats["light"] > 0.62, stats
        else:
            assert 0.4 < stats["light"] < 0.6, stats


def test_outlines_are_not_part_of_the_class():
    """Every class is drawn with both convex outlines and (non-convex) stars."""
    for k in range(NUM_CLASSES):
        rng = np.random.default_rng(k)
        convex = set()
        for _ in range(20):
            _, label, _ = shapes.sample_object_image(rng, k, size=64)
            mask = (label == k).astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            convex.add(bool(mask.sum() / cv2.contourArea(cv2.convexHull(contours[0])) > 0.8))
        assert convex == {True, False}, shapes.CLASS_NAMES[k]


def test_pattern_scale_is_in_pixels():
    """The same pattern has the same period (in px) in 48 px pretraining and 128 px images, and
    stripes take random orientations."""
    striped = shapes.PATTERNS.index("striped")
    for size in (48, 128):
        rng = np.random.default_rng(size)
        periods = []
        for color in range(4):
            k = color * 4 + striped
            for _ in range(3):
                image, label, _ = shapes.sample_object_image(rng, k, size=size)
                periods.append(_pattern_stats(image, label, k)["period"])
        assert 6.0 <= np.median(periods) <= 8.0 and min(periods) > 5.0 and max(periods) < 9.5, \
            (size, periods)
    angles = []
    for seed in range(8):
        image, label, _ = shapes.sample_object_image(np.random.default_rng(seed), striped, 128)
        gray = image.astype(np.float32).mean(axis=2) * (label == striped)
        gy, gx = np.gradient(cv2.GaussianBlur(gray, (0, 0), 1.0))
        inner = cv2.erode((label == striped).astype(np.uint8), np.ones((7, 7))) > 0
        # Dominant gradient orientation (doubled-angle mean) inside the object.
        angles.append(np.angle(np.sum((gx + 1j * gy)[inner] ** 2)) / 2)
    assert np.ptp(np.mod(angles, np.pi)) > np.pi / 3


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
