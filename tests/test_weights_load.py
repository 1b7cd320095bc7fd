"""Weights load completely or the run stops: wrong method, empty, other prompt count, --eval-only without
weights; a deliberate partial load; sem_seg_metrics.json records the file, its sha256 and the load status."""
import json
import logging
import os
import stat

import numpy as np
import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from PIL import Image

from ldvc_d2.checkpoint import Checkpointer, IncompleteWeightsError, file_sha256, training_free
from ldvc_d2.predictor import OpenVocabPredictor
from tests.conftest import REPO, tiny_cfg
from tests.scripts import run_train_net


@pytest.fixture(scope="module")
def ldvc_weights(tmp_path_factory):
    """A tiny LDVC (configs/demo.yaml) saved as train_net saves it."""
    torch.manual_seed(1)
    model = build_model(tiny_cfg())
    path = str(tmp_path_factory.mktemp("weights") / "model_final.pth")
    torch.save({"model": model.state_dict(), "iteration": 3}, path)
    return model, path


def _load(cfg_file: str, path: str, *opts) -> Checkpointer:
    cfg = tiny_cfg(cfg_file, *opts)
    checkpointer = Checkpointer(build_model(cfg), partial_load=cfg.MODEL.WEIGHTS_PARTIAL_LOAD)
    checkpointer.load(path)
    return checkpointer


def test_matching_weights_load_completely_and_frozen_clip_may_be_absent(ldvc_weights, tmp_path):
    model, path = ldvc_weights
    checkpointer = _load("configs/demo.yaml", path)
    assert checkpointer.load_status == {"weights": path, "sha256": file_sha256(path), "status": "complete"}
    for (k, a), (_, b) in zip(model.state_dict().items(), checkpointer.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    trainable = {k: v for k, v in model.state_dict().items() if dict(model.named_parameters())[k].requires_grad}
    frozen = len(model.state_dict()) - len(trainable)
    assert 0 < len(trainable) and frozen > 0
    only_trained = str(tmp_path / "trained_only.pth")
    torch.save({"model": trainable}, only_trained)
    status = _load("configs/demo.yaml", only_trained).load_status["status"]
    assert status == f"complete; {frozen} frozen tensor(s) not in the file keep the MODEL.CLIP.PRETRAINED weights"


def test_ldvc_weights_for_the_zegclip_config_are_an_error(ldvc_weights):
    with pytest.raises(IncompleteWeightsError, match=r"model_final.pth' do not fit .* trainable parameter\(s\)/buffer"
                                                     r"\(s\) missing: .*sem_seg_head.*unexpected key\(s\)"):
        _load("configs/shapes/zegclip.yaml", ldvc_weights[1])


def test_empty_state_dict_is_an_error(tmp_path):
    empty = str(tmp_path / "empty.pth")
    torch.save({"model": {}}, empty)
    with pytest.raises(IncompleteWeightsError, match=r"empty.pth' .* missing: backbone.visual.prompts"):
        _load("configs/demo.yaml", empty)


def test_other_number_of_prompts_is_an_error_unless_partial_load(ldvc_weights, caplog):
    prompts = tiny_cfg().MODEL.CLIP.VISUAL_PROMPTS
    with pytest.raises(IncompleteWeightsError, match=r"shape mismatch\(es\): backbone.visual.prompts \(\d+, "
                                                     f"{prompts}, \\d+\\) in the file, \\(\\d+, 3, \\d+\\) in the model"):
        _load("configs/demo.yaml", ldvc_weights[1], "MODEL.CLIP.VISUAL_PROMPTS", "3")
    with caplog.at_level(logging.WARNING, logger="ldvc_d2.checkpoint"):
        checkpointer = _load("configs/demo.yaml", ldvc_weights[1], "MODEL.CLIP.VISUAL_PROMPTS", "3",
                             "MODEL.WEIGHTS_PARTIAL_LOAD", "True")
    assert checkpointer.load_status["status"].startswith("partial: 1 shape mismatch(es): backbone.visual.prompts")
    assert "Loaded the matching part (MODEL.WEIGHTS_PARTIAL_LOAD True)" in caplog.text
    torch.testing.assert_close(checkpointer.model.sem_seg_head.state_dict(), ldvc_weights[0].sem_seg_head.state_dict())


def test_predictor_refuses_wrong_weights(ldvc_weights):
    with pytest.raises(IncompleteWeightsError, match="do not fit"):
        OpenVocabPredictor(tiny_cfg("configs/shapes/zegclip.yaml", "MODEL.WEIGHTS", ldvc_weights[1]))
    predictor = OpenVocabPredictor(tiny_cfg("configs/demo.yaml", "MODEL.WEIGHTS", ldvc_weights[1]))
    assert predictor.weights_status["status"] == "complete"


def test_training_free_is_a_meta_architecture_attribute():
    assert not training_free(tiny_cfg())

    @META_ARCH_REGISTRY.register()
    class _TestTrainingFree(torch.nn.Module):
        TRAINING_FREE = True

    try:
        assert training_free(tiny_cfg("configs/demo.yaml", "MODEL.META_ARCHITECTURE", "_TestTrainingFree"))
    finally:
        META_ARCH_REGISTRY._obj_map.pop("_TestTrainingFree")


def _mini_dataset(tmp_path):
    """Two 40x48 images with labels, registered by a --register file as 'mini_weights_val'."""
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 3, (40, 48), dtype=np.uint8)).save(tmp_path / "labels" / f"{i}.png")
    script = tmp_path / "register.py"
    script.write_text("from ldvc_d2.data import register_zero_shot_folder\n"
                      f"register_zero_shot_folder('mini_weights_val', {str(tmp_path / 'images')!r}, "
                      f"{str(tmp_path / 'labels')!r}, ['red circle', 'blue star', 'green square'], ['blue star'])\n")
    return str(script)


def test_eval_only_records_the_weights_and_refuses_no_weights(ldvc_weights, tmp_path):
    """train_net's parser and main (in this process: tests/scripts.py run_train_net) evaluate and record
    the weights, and refuse no weights and weights of another prompt count, writing no results."""
    script = _mini_dataset(tmp_path)
    common = ["--register", script, "MODEL.CLIP.PRETRAINED", "", "DATASETS.TEST", "('mini_weights_val',)",
              "DATALOADER.NUM_WORKERS", "0"]
    config = ["--config-file", os.path.join(REPO, "configs/demo.yaml")]
    with pytest.raises(ValueError, match="--eval-only without MODEL.WEIGHTS would evaluate an untrained"):
        run_train_net(*config, "--eval-only", *common, "OUTPUT_DIR", str(tmp_path / "none"))
    assert not os.path.exists(tmp_path / "none" / "inference")
    run_train_net(*config, "--eval-only", *common, "MODEL.WEIGHTS", ldvc_weights[1], "OUTPUT_DIR", str(tmp_path / "out"))
    path = tmp_path / "out" / "inference" / "mini_weights_val" / "sem_seg_metrics.json"
    report = json.loads(path.read_text())
    assert report["weights"] == {"weights": ldvc_weights[1], "sha256": file_sha256(ldvc_weights[1]),
                                 "status": "complete"}
    assert report["num_images"] == 2
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "out" / "config.yaml").st_mode) == 0o666 & ~_umask()
    with pytest.raises(IncompleteWeightsError, match="backbone.visual.prompts"):
        run_train_net(*config, "--eval-only", *common, "MODEL.WEIGHTS", ldvc_weights[1], "MODEL.CLIP.VISUAL_PROMPTS",
                      "3", "OUTPUT_DIR", str(tmp_path / "wrong"))
    assert not os.path.exists(tmp_path / "wrong" / "inference")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_sha256_of_url_and_query_suffixed_weights(tmp_path):
    """load_status hashes the local file a URL resolved to, and ignores current detectron2's
    ``?matching_heuristics=True`` suffix (not part of the file name)."""
    from iopath.common.file_io import PathHandler, PathManager

    class Folder(PathHandler):  # a URL scheme served from tmp_path, as detectron2:// is from the cache
        def _get_supported_prefixes(self):
            return ["ldvc-test://"]

        def _get_local_path(self, path, **kwargs):
            return str(tmp_path / path[len("ldvc-test://"):])

        def _open(self, path, mode="r", **kwargs):
            return open(self._get_local_path(path), mode)

    path = str(tmp_path / "w.pth")
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, path)
    checkpointer = Checkpointer(torch.nn.Linear(2, 2))
    checkpointer.path_manager = PathManager()
    checkpointer.path_manager.register_handler(Folder())
    checkpointer.load("ldvc-test://w.pth")
    assert checkpointer.load_status["sha256"] == file_sha256(path)
    assert checkpointer._local_weights_file(path + "?matching_heuristics=True") == path
    assert checkpointer._local_weights_file(str(tmp_path / "absent.pth")) is None
