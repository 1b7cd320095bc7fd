"""Dataset mappers: ZegCLIP's training augmentation (LDVC §4.1, DESIGN §1.3) and the test resize.

Training: resize to a random ratio in INPUT.SCALE_RATIO_RANGE of INPUT.TRAIN_SCALE (keeping the
aspect ratio, as mmseg's ``Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0))``), random crop of
INPUT.CROP.SIZE where no class covers more than SINGLE_CATEGORY_MAX_AREA, horizontal flip, and
photometric distortion. Crops smaller than the crop size are padded by the model (image 0, label 255).
Labels stay over *all* classes of the dataset; the model derives its training view (seen classes).

Test: the short side is resized to INPUT.MIN_SIZE_TEST; each input also carries the dataset's class
list (``class_names``) and ``seen_classes``, so one model evaluates any dataset's vocabulary.
"""
import copy
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from ..utils.io import read_label
from .image_io import read_image

__all__ = ["LDVCTrainMapper", "LDVCTestMapper", "LabelResizeTransform", "PhotometricDistortion", "RandomScaleResize",
           "check_label_size", "photometric_distortion"]


def check_label_size(label_path: str, image_path: str, image_hw: Tuple[int, int]) -> None:
    """A label of another size than its image is an error naming both (labels are per pixel)."""
    try:
        with Image.open(label_path) as im:
            width, height = im.size
    except (OSError, SyntaxError) as e:
        raise ValueError(f"Cannot read label '{label_path}' ({type(e).__name__}: {e}).") from e
    if (height, width) != tuple(image_hw):
        raise ValueError(f"Label '{label_path}' is {width}x{height} but its image '{image_path}' is "
                         f"{image_hw[1]}x{image_hw[0]} (WxH); a label must have its image's size "
                         "(tools/check_dataset.py lists every such pair).")


class LabelResizeTransform(T.ResizeTransform):
    """detectron2's resize, whose label resize also works for 16-bit labels: detectron2 resizes
    non-uint8 arrays with ``torch.nn.functional.interpolate`` (no uint16 support, and its "nearest"
    samples other pixels than Pillow's NEAREST). Here a uint16 label is resized by Pillow's NEAREST
    in 32-bit mode "I", so it gets exactly the pixels an 8-bit label of the same values gets."""

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        if segmentation.dtype == np.uint8:
            return super().apply_segmentation(segmentation)
        if segmentation.ndim != 2 or segmentation.min(initial=0) < 0 or segmentation.max(initial=0) > 65535:
            raise ValueError(f"Labels are H×W arrays of values 0..65535, got {segmentation.dtype} "
                             f"{segmentation.shape}.")
        image = Image.fromarray(segmentation.astype(np.int32), mode="I")
        resized = image.resize((self.new_w, self.new_h), Image.NEAREST)
        return np.asarray(resized).astype(segmentation.dtype)


class RandomScaleResize(T.Augmentation):
    """Resize so the image fits (long, short) = ratio × ``scale`` with ratio ~ U(ratio_range)."""

    def __init__(self, scale: Tuple[int, int], ratio_range: Tuple[float, float]):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        r = np.random.uniform(*self.ratio_range)
        long_side, short_side = self.scale[0] * r, self.scale[1] * r
        f = min(long_side / max(h, w), short_side / min(h, w))
        return LabelResizeTransform(h, w, max(int(h * f + 0.5), 1), max(int(w * f + 0.5), 1))


def _clip_uint8(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``x * alpha + beta`` in float32, clipped to [0, 255] and truncated to uint8, as mmseg after each step."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _hsv_step(img: np.ndarray, channel: int, fn) -> np.ndarray:
    """RGB uint8 -> OpenCV 8-bit HSV (H 0-179, S/V 0-255) -> ``fn`` on one channel -> RGB uint8."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[..., channel] = fn(hsv[..., channel])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


class PhotometricDistortion(T.Augmentation):
    """mmseg's ``PhotoMetricDistortion`` as ZegCLIP's pipeline uses it (defaults), step by step on a uint8
    RGB image; each step happens with p=0.5 and ends with a clip to [0, 255] and a uint8 cast:

    1. brightness: + U(-32, 32);
    2. contrast: × U(0.5, 1.5), here if a fair coin says "first" (else as step 5);
    3. saturation: S × U(0.5, 1.5) in OpenCV's 8-bit HSV (its own RGB->HSV->RGB round trip);
    4. hue: H + randint(-18, 18) (numpy: -18..17), modulo 180 (OpenCV's 0-179 hue), own round trip;
    5. contrast, if not done in step 2.

    Random numbers are drawn from ``np.random`` in mmseg's order, so a seeded run draws the same
    parameters as mmseg. (mmseg works on BGR with BGR2HSV; RGB with RGB2HSV gives the same HSV.)
    """

    def __init__(self, brightness_delta: int = 32, contrast_range: Tuple[float, float] = (0.5, 1.5),
                 saturation_range: Tuple[float, float] = (0.5, 1.5), hue_delta: int = 18):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        rng = np.random

        def maybe(draw):
            return draw() if rng.randint(2) else None

        brightness = maybe(lambda: rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = rng.randint(2) == 1
        contrast = maybe(lambda: rng.uniform(*self.contrast_range)) if contrast_first else None
        saturation = maybe(lambda: rng.uniform(*self.saturation_range))
        hue = maybe(lambda: rng.randint(-self.hue_delta, self.hue_delta))
        if not contrast_first:
            contrast = maybe(lambda: rng.uniform(*self.contrast_range))
        return T.ColorTransform(functools.partial(
            photometric_distortion, brightness=brightness, contrast=contrast, contrast_first=contrast_first,
            saturation=saturation, hue=hue))


def photometric_distortion(img: np.ndarray, brightness: Optional[float], contrast: Optional[float],
                           contrast_first: bool, saturation: Optional[float], hue: Optional[int]) -> np.ndarray:
    """Apply the drawn steps of :class:`PhotometricDistortion` (None = step skipped) to an H×W×3 uint8 RGB image."""
    if img.dtype != np.uint8:
        raise ValueError(f"PhotometricDistortion needs a uint8 image (mmseg's), got {img.dtype}; "
                         "set INPUT.PHOTOMETRIC_DISTORTION False for other inputs.")
    if brightness is not None:
        img = _clip_uint8(img, beta=brightness)
    if contrast_first and contrast is not None:
        img = _clip_uint8(img, alpha=contrast)
    if saturation is not None:
        img = _hsv_step(img, 1, lambda s: _clip_uint8(s, alpha=saturation))
    if hue is not None:
        img = _hsv_step(img, 0, lambda h: ((h.astype(np.int64) + hue) % 180).astype(np.uint8))
    if not contrast_first and contrast is not None:
        img = _clip_uint8(img, alpha=contrast)
    return img


class LDVCTrainMapper:
    """Reads image + full label map (8- or 16-bit PNG) and applies the training augmentation. Output:
    ``image`` uint8 3×H×W tensor (RGB), ``sem_seg`` int64 H×W (class index over all classes, or the
    ignore value MODEL.SEM_SEG_HEAD.IGNORE_VALUE, which must be the training set's ``ignore_label``)."""

    @configurable
    def __init__(self, *, augmentations: List[T.Augmentation], image_format: str = "RGB",
                 num_classes: Optional[int] = None, ignore_label: int = 255):
        """num_classes: labels must be in [0, num_classes) or ``ignore_label`` (checked per image)."""
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_label = ignore_label

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        augs: List[T.Augmentation] = [RandomScaleResize(tuple(cfg.INPUT.TRAIN_SCALE), tuple(cfg.INPUT.SCALE_RATIO_RANGE))]
        if cfg.INPUT.CROP.ENABLED:
            augs.append(T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            ))
        augs.append(T.RandomFlip())
        if cfg.INPUT.PHOTOMETRIC_DISTORTION:
            augs.append(PhotometricDistortion())
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
        names = meta.get("stuff_classes", None) if meta else None
        ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        if meta and meta.get("ignore_label", ignore) != ignore:  # e.g. a 16-bit set, ignore 65535
            raise ValueError(
                f"Training set '{cfg.DATASETS.TRAIN[0]}' marks ignored pixels {meta.ignore_label}, but "
                f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE is {ignore}; set MODEL.SEM_SEG_HEAD.IGNORE_VALUE "
                f"{meta.ignore_label} in the config.")
        return {"augmentations": augs, "image_format": cfg.INPUT.FORMAT,
                "num_classes": len(names) if names else None, "ignore_label": ignore}

    def __call__(self, dataset_dict: Dict) -> Dict:
        d = copy.deepcopy(dataset_dict)
        image = read_image(d["file_name"], format=self.image_format)
        label = read_label(d["sem_seg_file_name"])
        if self.num_classes is not None:
            bad = np.unique(label[(label != self.ignore_label) & (label >= self.num_classes)])
            if bad.size:
                raise ValueError(
                    f"Label '{d['sem_seg_file_name']}' has values {bad[:5].tolist()} outside 0..{self.num_classes - 1} "
                    f"(and {self.ignore_label} = ignore). Labels must be class indices of the dataset's "
                    "stuff_classes: check the label-id mapping (e.g. 1-based ids) and re-run datasets/prepare_*.py."
                )
        if image.shape[:2] != label.shape:
            raise ValueError(
                f"Image '{d['file_name']}' is {image.shape[1]}x{image.shape[0]} but its label "
                f"'{d['sem_seg_file_name']}' is {label.shape[1]}x{label.shape[0]}."
            )
        aug = T.AugInput(image, sem_seg=label)
        self.augmentations(aug)
        d["image"] = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)))
        d["sem_seg"] = torch.as_tensor(aug.sem_seg.astype(np.int64))
        d["height"], d["width"] = aug.image.shape[:2]  # read by detectron2's aspect-ratio grouping
        return d


class LDVCTestMapper:
    """Resizes the short side to INPUT.MIN_SIZE_TEST and attaches the dataset's vocabulary."""

    @configurable
    def __init__(
        self,
        *,
        min_size: int,
        max_size: int,
        image_format: str = "RGB",
        class_names: Optional[Sequence[str]] = None,
        seen_classes: Sequence[int] = (),
    ):
        self.resize = T.ResizeShortestEdge(min_size, max_size)
        self.image_format = image_format
        self.class_names = list(class_names) if class_names else None
        self.seen_classes = list(seen_classes)

    @classmethod
    def from_config(cls, cfg, dataset_name: Optional[str] = None):
        meta = MetadataCatalog.get(dataset_name) if dataset_name else None
        return {
            "min_size": cfg.INPUT.MIN_SIZE_TEST,
            "max_size": cfg.INPUT.MAX_SIZE_TEST,
            "image_format": cfg.INPUT.FORMAT,
            "class_names": (meta.get("prompt_class_names", None) if cfg.DATASETS.PROMPT_CLASS_NAMES else None)
            or meta.get("stuff_classes", None) if meta else None,
            "seen_classes": meta.get("seen_classes", []) if meta else [],
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        d = copy.deepcopy(dataset_dict)
        image = read_image(d["file_name"], format=self.image_format)
        if "sem_seg_file_name" in d:  # evaluation: the label must fit the image (header read only)
            check_label_size(d["sem_seg_file_name"], d["file_name"], image.shape[:2])
        d.setdefault("height", image.shape[0])
        d.setdefault("width", image.shape[1])
        image = self.resize.get_transform(image).apply_image(image)
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.class_names is not None:
            d["class_names"] = self.class_names
            d["seen_classes"] = self.seen_classes
        return d
