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
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

__all__ = ["LDVCTrainMapper", "LDVCTestMapper", "PhotometricDistortion", "RandomScaleResize", "read_label"]


def read_label(path: str) -> np.ndarray:
    """Read an index PNG (mode L/P/I) as an H×W uint8 array; a colour label is an error naming the file."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(
                f"Label '{path}' is a {im.mode} image; labels must be single-channel index PNGs (class "
                "index per pixel, 255 = ignore). Convert it with the datasets/prepare_*.py scripts."
            )
        label = np.asarray(im)
    if label.max(initial=0) > 255:
        raise ValueError(f"Label '{path}' has values above 255; class indices must be 0-254, 255 = ignore.")
    return label.astype(np.uint8)


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
        return T.ResizeTransform(h, w, max(int(h * f + 0.5), 1), max(int(w * f + 0.5), 1))


class PhotometricDistortion(T.Augmentation):
    """mmseg's PhotoMetricDistortion: brightness ±32, contrast 0.5-1.5 (before or after the
    saturation/hue change), saturation 0.5-1.5, hue ±18 (OpenCV's 0-180 scale), each with p=0.5."""

    def get_transform(self, image):
        rng = np.random
        brightness = rng.uniform(-32, 32) if rng.rand() < 0.5 else 0.0
        contrast = rng.uniform(0.5, 1.5) if rng.rand() < 0.5 else 1.0
        contrast_first = rng.rand() < 0.5
        saturation = rng.uniform(0.5, 1.5) if rng.rand() < 0.5 else 1.0
        hue = rng.randint(-18, 19) if rng.rand() < 0.5 else 0

        def apply(img: np.ndarray) -> np.ndarray:
            x = img.astype(np.float32) + brightness
            if contrast_first:
                x = x * contrast
            x = np.clip(x, 0, 255).astype(np.uint8)
            if saturation != 1.0 or hue:
                hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV).astype(np.float32)
                hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
                hsv[..., 0] = (hsv[..., 0] + hue) % 180
                x = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
            if not contrast_first:
                x = np.clip(x.astype(np.float32) * contrast, 0, 255).astype(np.uint8)
            return x

        return T.ColorTransform(apply)


class LDVCTrainMapper:
    """Reads image + full label map and applies the training augmentation. Output: ``image`` uint8
    3×H×W tensor (RGB), ``sem_seg`` int64 H×W (class index over all classes, 255 = ignore)."""

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
        names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("stuff_classes", None) if cfg.DATASETS.TRAIN else None
        return {"augmentations": augs, "image_format": cfg.INPUT.FORMAT,
                "num_classes": len(names) if names else None, "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE}

    def __call__(self, dataset_dict: Dict) -> Dict:
        d = copy.deepcopy(dataset_dict)
        image = utils.read_image(d["file_name"], format=self.image_format)
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
            "class_names": meta.get("stuff_classes", None) if meta else None,
            "seen_classes": meta.get("seen_classes", []) if meta else [],
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        d = copy.deepcopy(dataset_dict)
        image = utils.read_image(d["file_name"], format=self.image_format)
        d.setdefault("height", image.shape[0])
        d.setdefault("width", image.shape[1])
        image = self.resize.get_transform(image).apply_image(image)
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.class_names is not None:
            d["class_names"] = self.class_names
            d["seen_classes"] = self.seen_classes
        return d
