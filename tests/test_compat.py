"""The detectron2 0.6 shims: what they provide, and that detectron2 0.6's own code then runs."""
import numpy as np
import torch
from PIL import Image

import ldvc_d2.compat as compat


def test_aliases_present_after_import():
    compat.apply()
    assert Image.LINEAR == Image.Resampling.BILINEAR and Image.ANTIALIAS == Image.Resampling.LANCZOS
    assert np.int is int and np.float is float and np.object is object


def test_detectron2_code_that_needs_the_shims_runs():
    from detectron2.data import transforms as T  # Image.LINEAR default argument

    t = T.ExtentTransform((0, 0, 4, 4), (4, 4))
    assert t.apply_image(np.zeros((4, 4, 3), np.uint8)).shape == (4, 4, 3)
    from detectron2.data.build import print_instances_class_histogram  # noqa: F401  (np.int at call)


def test_checkpointer_resumes_numpy_state(tmp_path):
    """torch>=2.6 loads weights_only by default; detectron2 checkpoints carry NumPy objects."""
    from detectron2.checkpoint import DetectionCheckpointer

    model = torch.nn.Linear(2, 2)
    ckpt = DetectionCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("m", iteration=np.int64(7), extra=np.array([1.5]))
    loaded = DetectionCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path)).load(str(tmp_path / "m.pth"))
    assert loaded["iteration"] == 7 and loaded["extra"][0] == 1.5
