"""A tiny copy of the shapes benchmark (12 train / 6 val images of 64 px) registered under its own
names, for runs of several processes (each process registers it: ``--register`` file or
:func:`register`). Generating it takes well under a second."""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ldvc_d2.benchmarks.shapes.dataset import CLASS_NAMES, UNSEEN_CLASSES, generate_shapes_dataset
from ldvc_d2.data import register_zero_shot_folder

TRAIN, VAL = "tiny_shapes_train", "tiny_shapes_val"


def make(root: str) -> str:
    """Generate the images under ``root`` and write ``root/register_tiny_shapes.py`` (for --register)."""
    data = str(generate_shapes_dataset(root, num_train=12, num_val=6, image_size=64))
    path = os.path.join(root, "register_tiny_shapes.py")
    with open(path, "w") as f:
        f.write(f"from tests.tiny_shapes import register\nregister({data!r})\n")
    return data


def register(data: str) -> None:
    """Register (or re-register: tests in one process use different temporary roots) the two splits.
    Registering the same root again is a no-op of register_zero_shot_folder; another root replaces it."""
    for name, split in ((TRAIN, "train"), (VAL, "val")):
        args = (name, os.path.join(data, "images", split), os.path.join(data, "labels", split), CLASS_NAMES,
                UNSEEN_CLASSES)
        try:
            register_zero_shot_folder(*args, image_ext=".png")
        except ValueError:  # registered with another root
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
            register_zero_shot_folder(*args, image_ext=".png")
