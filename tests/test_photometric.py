"""INPUT.PHOTOMETRIC_DISTORTION in the training mapper: applied last (after resize, crop and flip, as in
mmseg's pipeline), to the image only, with parameters drawn in mmseg's order after the geometric ones.
The steps themselves are checked against hand computations in tests/test_mapper.py."""
import numpy as np
import pytest
from PIL import Image

from ldvc_d2.data import LDVCTrainMapper
from ldvc_d2.data.mapper import photometric_distortion
from tests.conftest import tiny_cfg
from tests.test_mapper import _mmseg_draws


def _mapper(distort: bool) -> LDVCTrainMapper:
    return LDVCTrainMapper(tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", "()", "INPUT.TRAIN_SCALE", "(64, 32)",
                                    "INPUT.CROP.SIZE", "(32, 32)", "INPUT.PHOTOMETRIC_DISTORTION", str(distort)), True)


@pytest.mark.parametrize("seed", range(6))
def test_mapper_distorts_the_augmented_image_last_and_leaves_the_label(tmp_path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(rng.integers(0, 16, (40, 56)).astype(np.uint8)).save(tmp_path / "lab.png")
    d = {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "lab.png")}
    np.random.seed(seed)
    plain = _mapper(False)(d)
    params = _mmseg_draws(np.random)
    np.random.seed(seed)
    distorted = _mapper(True)(d)
    assert (distorted["sem_seg"] == plain["sem_seg"]).all()
    expected = photometric_distortion(plain["image"].numpy().transpose(1, 2, 0).copy(), **params)
    np.testing.assert_array_equal(distorted["image"].numpy().transpose(1, 2, 0), expected)
    if any(params[k] is not None for k in ("brightness", "contrast", "saturation", "hue")):
        assert (distorted["image"] != plain["image"]).any()
