"""Open-vocabulary prediction from Python: ``OpenVocabPredictor(cfg)(image, class_names)``.

The predictor is Detectron2's ``DefaultPredictor`` for a model whose classes are chosen per call:
it builds the model from a config, loads ``MODEL.WEIGHTS``, resizes the image as the test mapper
does (short side INPUT.MIN_SIZE_TEST, long side at most INPUT.MAX_SIZE_TEST) and runs the model's
own inference (``ZeroShotSegmentor.forward`` with a ``"class_names"`` input: sliding window or whole image,
sigmoid scores resized back to the input size). Any class list works; the text embeddings of a
list are computed once and cached by the model.

    cfg = load_config("configs/demo.yaml", ["MODEL.WEIGHTS", "output/demo/model_final.pth"])
    predictor = OpenVocabPredictor(cfg)                   # images as cv2.imread gives them (BGR)
    out = predictor(cv2.imread("img.jpg"), ["cat", "sofa", "lamp"])
    out["sem_seg"]   # C×H×W float tensor: per-class sigmoid scores
    out["labels"]    # H×W int64 tensor: arg-max class index; -1 where no score reaches the threshold

Class-list helpers (:func:`check_class_names`, :func:`parse_class_list`, :func:`read_vocabulary_file`,
:func:`dataset_vocabulary`) give errors that name the offending entry and its source.
"""
import argparse
import logging
import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from .checkpoint import Checkpointer, training_free
from .config import add_ldvc_config, load_config_file, merge_overrides, validate_config
from .data import load_user_modules
from .data.mapper import LDVCTestMapper
from .modeling import inference_model

__all__ = [
    "OpenVocabPredictor", "UNLABELED", "add_vocabulary_arguments", "check_class_names", "dataset_vocabulary",
    "load_config", "parse_class_list", "read_vocabulary_file", "start_tool", "vocabulary_from_args",
]

logger = logging.getLogger(__name__)
UNLABELED = -1  # label of pixels whose best score is below the threshold


def load_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """The config of ``config_file`` (read safely: :func:`~ldvc_d2.config.load_config_file`) with
    ``opts`` (KEY VALUE ...) merged and checked for inference (:func:`~ldvc_d2.config.validate_config`);
    a CUDA device is replaced by the CPU, with a warning, when there is none."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file '{config_file}' does not exist (see configs/).")
    cfg = get_cfg()
    add_ldvc_config(cfg)
    load_config_file(cfg, config_file)
    merge_overrides(cfg, opts)
    validate_config(cfg, training=False)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("No CUDA device: running on the CPU (MODEL.DEVICE cpu).")
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def _token_key(name: str) -> str:
    """What CLIP's tokenizer sees: lower case, runs of whitespace as one space."""
    return re.sub(r"\s+", " ", name.strip()).lower()


def check_class_names(names: Sequence[str], source: str = "class list") -> List[str]:
    """Strip the names and check them: a non-empty list of non-empty strings, no two the same for
    CLIP's tokenizer (which ignores case and extra spaces). ``source`` names where they came from."""
    names = list(names)
    if not names:
        raise ValueError(f"{source}: no class names. Give at least one, e.g. --classes \"cat,sofa,lamp\".")
    out, first = [], {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"{source}: entry {i + 1} is {name!r}, not a string.")
        name = name.strip()
        if not name:
            raise ValueError(f"{source}: class name {i + 1} of {len(names)} is empty; remove it (check for "
                             "doubled or trailing commas, or blank entries).")
        key = _token_key(name)
        if key in first:
            j = first[key]
            raise ValueError(f"{source}: class names {j + 1} ('{out[j]}') and {i + 1} ('{name}') are the same "
                             "name for CLIP (case and spaces are ignored); give each class once.")
        first[key] = i
        out.append(name)
    return out


def parse_class_list(text: str, source: str = "--classes") -> List[str]:
    """Comma-separated class names, e.g. ``"cat, sofa, lamp"``."""
    return check_class_names(text.split(","), source)


def read_vocabulary_file(path: str) -> List[str]:
    """One class name per line; blank lines and lines starting with ``#`` are skipped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Vocabulary file '{path}' does not exist; it should hold one class name per line.")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except UnicodeDecodeError as e:
        raise ValueError(f"Vocabulary file '{path}' is not UTF-8 text (byte {e.start}: {e.reason}); save it as "
                         "UTF-8, one class name per line.") from None
    return check_class_names([line for line in lines if line and not line.startswith("#")],
                             f"vocabulary file '{path}'")


def dataset_vocabulary(dataset_name: str) -> Tuple[List[str], List[int], List[Tuple[int, int, int]]]:
    """(class names, seen class indices, colours) of a registered dataset."""
    meta = MetadataCatalog.get(dataset_name)
    names = meta.get("stuff_classes", None)
    if not names:
        known = ", ".join(n for n in MetadataCatalog.list() if MetadataCatalog.get(n).get("stuff_classes", None))
        raise ValueError(f"Dataset '{dataset_name}' is not registered with stuff_classes. Registered: {known}. "
                         "Register your own with ldvc_d2.data.register_zero_shot_folder (README, 'Your own dataset').")
    colors = [tuple(c) for c in meta.get("stuff_colors", [])]
    return check_class_names(names, f"dataset '{dataset_name}'"), list(meta.get("seen_classes", [])), colors


def add_vocabulary_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line vocabulary of the tools: exactly one of --classes, --vocabulary-file,
    --dataset-classes (read back by :func:`vocabulary_from_args`)."""
    vocab = parser.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--classes", help='comma-separated class names, e.g. "cat,sofa,lamp"')
    vocab.add_argument("--vocabulary-file", metavar="FILE", help="text file, one class name per line")
    vocab.add_argument("--dataset-classes", metavar="NAME",
                       help="the classes of a registered dataset, e.g. voc_zs_val (its seen classes get the "
                            "seen-score calibration, as in evaluation)")


def vocabulary_from_args(args: argparse.Namespace) -> Tuple[List[str], List[int], List[Tuple[int, int, int]]]:
    """(class names, seen class indices, colours) from :func:`add_vocabulary_arguments`' options;
    seen classes and colours are empty unless they come from a dataset."""
    if args.classes is not None:
        return parse_class_list(args.classes), [], []
    if args.vocabulary_file is not None:
        return read_vocabulary_file(args.vocabulary_file), [], []
    return dataset_vocabulary(args.dataset_classes)


def start_tool(args: argparse.Namespace) -> Tuple[List[str], List[int], List[Tuple[int, int, int]]]:
    """The common start of the command-line tools: loggers, the user's dataset registrations
    (``--register``), then the vocabulary (:func:`vocabulary_from_args`)."""
    from detectron2.utils.logger import setup_logger

    setup_logger(name="ldvc_d2")
    setup_logger(name="fvcore")
    load_user_modules(args.register)
    return vocabulary_from_args(args)


class OpenVocabPredictor:
    """Builds the model of ``cfg``, loads ``cfg.MODEL.WEIGHTS`` and segments images with any class list.

    Args:
        cfg: a config of any method (:func:`load_config`).
        input_format: channel order of the images given to ``__call__``: "BGR" (cv2.imread, the
            Detectron2 convention) or "RGB" (PIL).
    """

    def __init__(self, cfg: CfgNode, *, input_format: str = "BGR"):
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"input_format must be 'BGR' or 'RGB', got '{input_format}'.")
        self.cfg = cfg.clone()
        self.input_format = input_format
        self.model = inference_model(build_model(self.cfg)).eval()  # no training-only modules (C2S's latent decoder)
        self.weights_status = {"weights": "", "sha256": None, "status": "not loaded (no file given)"}
        weights = self.cfg.MODEL.WEIGHTS
        if weights:
            if "://" not in weights and not os.path.isfile(weights):
                raise FileNotFoundError(f"MODEL.WEIGHTS '{weights}' does not exist. Train a model first (train_net.py) "
                                        "and pass its output/<run>/model_final.pth.")
            checkpointer = Checkpointer(self.model, partial_load=self.cfg.MODEL.WEIGHTS_PARTIAL_LOAD)
            checkpointer.load(weights)
            self.weights_status = checkpointer.load_status  # file, sha256, "complete" / "partial: ..."
        elif not training_free(self.cfg):
            logger.warning("MODEL.WEIGHTS is empty: the prompts and the decoder are untrained (random), so the "
                           "predictions are meaningless. Pass MODEL.WEIGHTS output/<run>/model_final.pth.")
        self.resize = LDVCTestMapper(self.cfg).resize  # the test protocol's resize

    @torch.no_grad()
    def __call__(
        self,
        image: np.ndarray,
        class_names: Sequence[str],
        *,
        seen_classes: Sequence[int] = (),
        score_threshold: float = 0.0,
    ) -> Dict[str, object]:
        """Segment one image.

        Args:
            image: H×W×3 uint8 in ``input_format`` order (H×W grey and H×W×4 with alpha also work).
            class_names: the vocabulary; the output channels follow its order.
            seen_classes: indices of classes the model was trained on; their scores get the seen-score
                calibration of the config (MODEL.SEGMENTOR.SEEN_SCORE_CALIBRATION), as in evaluation.
                Leave empty for an open vocabulary.
            score_threshold: pixels whose best score is below it are labelled ``UNLABELED`` (-1).

        Returns:
            ``{"sem_seg": C×H×W float tensor of sigmoid scores, "labels": H×W int64 tensor,
            "class_names": list}`` on the CPU, at the input's size.
        """
        names = check_class_names(class_names)
        bad = [i for i in seen_classes if not 0 <= i < len(names)]
        if bad:
            raise ValueError(f"seen_classes {bad} are not indices into the {len(names)} class names.")
        rgb = self._to_rgb(image)
        height, width = rgb.shape[:2]
        resize = self.resize.get_transform(rgb)
        if min(resize.new_h, resize.new_w) < 1:
            raise ValueError(
                f"An image of {width}x{height} pixels is too elongated: the test resize (short side "
                f"{self.cfg.INPUT.MIN_SIZE_TEST}, long side at most {self.cfg.INPUT.MAX_SIZE_TEST}) makes it "
                f"{resize.new_w}x{resize.new_h}. Crop it, or pad it to a less extreme aspect ratio.")
        resized = resize.apply_image(rgb)
        if self.cfg.INPUT.FORMAT == "BGR":
            resized = resized[:, :, ::-1]
        inputs = {"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))),
                  "height": height, "width": width, "class_names": names, "seen_classes": list(seen_classes)}
        scores = self.model([inputs])[0]["sem_seg"].float().cpu()
        best, labels = scores.max(dim=0)
        if score_threshold > 0:
            labels[best < score_threshold] = UNLABELED
        return {"sem_seg": scores, "labels": labels, "class_names": names}

    def _to_rgb(self, image: np.ndarray) -> np.ndarray:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise TypeError(f"Expected an H×W×3 uint8 numpy image, got {type(image).__name__} "
                            f"{getattr(image, 'dtype', '')}.")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"Expected an H×W×3 image, got shape {image.shape}.")
        return image[:, :, ::-1] if self.input_format == "BGR" else image
