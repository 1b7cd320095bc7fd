"""Nothing runs code when it is loaded: checkpoints (.pth, .pkl) and configs; corrupt files named; saves atomic."""
import os
import pickle
import pickletools

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg

from ldvc_d2 import add_ldvc_config
from ldvc_d2.checkpoint import (
    TRUST_ENV, Checkpointer, CheckpointLoadError, UnsafeCheckpointError, file_sha256, load_checkpoint_file,
)
from ldvc_d2.config import load_config_file
from ldvc_d2.predictor import OpenVocabPredictor, load_config
from tests.conftest import REPO, tiny_cfg


class Payload:
    """Unpickling it creates a folder: the proof that a load ran code."""

    def __init__(self, folder: str):
        self.folder = folder

    def __reduce__(self):
        return os.mkdir, (self.folder,)


@pytest.fixture
def payload_pth(tmp_path):
    flag = str(tmp_path / "code_ran")
    path = str(tmp_path / "evil.pth")
    torch.save({"model": torch.nn.Linear(2, 2).state_dict(), "extra": Payload(flag)}, path)
    return path, flag


def test_payload_pth_is_refused_by_every_loader(payload_pth, monkeypatch):
    path, flag = payload_pth
    monkeypatch.delenv(TRUST_ENV, raising=False)
    for load in (lambda: Checkpointer(torch.nn.Linear(2, 2)).load(path),
                 lambda: DetectionCheckpointer(torch.nn.Linear(2, 2)).load(path),  # fvcore's loader, as detectron2 uses it
                 lambda: OpenVocabPredictor(tiny_cfg("configs/demo.yaml", "MODEL.WEIGHTS", path))):
        with pytest.raises(UnsafeCheckpointError, match=r"evil.pth' holds Python objects of type \S*mkdir.*"
                                                        + TRUST_ENV + "=1.*only for files you trust"):
            load()
    assert not os.path.exists(flag)
    monkeypatch.setenv(TRUST_ENV, "1")  # the explicit opt-in is the only way round
    assert "extra" in load_checkpoint_file(path) and os.path.isdir(flag)


def test_payload_pkl_and_pyth_are_refused_and_model_zoo_files_load(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    flag = str(tmp_path / "code_ran")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {}, "__author__": Payload(flag)}))
    evil_pyth = tmp_path / "evil.pyth"  # pycls format, which DetectionCheckpointer reads with torch.load
    torch.save({"model_state": {}, "cfg": Payload(flag)}, str(evil_pyth))
    for checkpointer in (Checkpointer, DetectionCheckpointer):  # detectron2's own loader too (ldvc_d2.compat)
        with pytest.raises(UnsafeCheckpointError, match=r"evil.pkl' holds a Python object of type \S*mkdir"):
            checkpointer(torch.nn.Linear(2, 2)).load(str(evil))
        with pytest.raises(UnsafeCheckpointError, match=r"evil.pyth' holds Python objects of type \S*mkdir"):
            checkpointer(torch.nn.Linear(2, 2)).load(str(evil_pyth))
    assert not os.path.exists(flag)
    # detectron2 model zoo format: NumPy arrays by parameter name
    source = torch.nn.Linear(3, 2)
    zoo = tmp_path / "zoo.pkl"
    zoo.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in source.state_dict().items()},
                                  "__author__": "test"}, protocol=2))
    pyth = tmp_path / "pycls.pyth"
    torch.save({"model_state": source.state_dict(), "epoch": 3}, str(pyth))
    for checkpointer in (Checkpointer, DetectionCheckpointer):
        for path in (zoo, pyth):
            target = torch.nn.Linear(3, 2)
            checkpointer(target).load(str(path))
            torch.testing.assert_close(target.weight, source.weight)


def test_trainer_state_with_numpy_loads_including_numpy1_files(tmp_path, monkeypatch):
    """What detectron2 trainers may store (NumPy scalars, arrays, a RandomState state) loads safely,
    also from a file pickled by NumPy 1 (module ``numpy.core`` instead of NumPy 2's ``numpy._core``)."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    state = np.random.RandomState(3).get_state()
    checkpointer = Checkpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path))
    checkpointer.save("m", iteration=np.int64(7), extra=np.array([1.5], np.float32), rng=state)
    loaded = Checkpointer(torch.nn.Linear(2, 2)).load(str(tmp_path / "m.pth"))
    assert loaded["iteration"] == 7 and loaded["extra"].dtype == np.float32 and loaded["extra"][0] == 1.5
    assert np.array_equal(loaded["rng"][1], state[1])
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": {}, "iteration": np.int64(9), "a": np.arange(4)}, str(legacy),
               _use_new_zipfile_serialization=False)
    data = legacy.read_bytes()
    assert b"numpy._core.multiarray" in data
    legacy.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = load_checkpoint_file(str(legacy))
    assert loaded["iteration"] == 9 and loaded["a"].tolist() == [0, 1, 2, 3]


def test_protocol5_pickles_of_numpy_arrays_load(tmp_path, monkeypatch):
    """Protocol 5 stores an array through ``numpy._core.numeric._frombuffer`` (``numpy.core.numeric`` when
    pickled by NumPy 1): harmless, so a .pkl written with it loads."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    source = torch.nn.Linear(3, 2)
    arrays = {k: v.numpy() for k, v in source.state_dict().items()}
    data = pickle.dumps({"model": arrays, "__author__": "test"}, protocol=5)
    assert b"numpy._core.numeric" in data and b"_frombuffer" in data
    numpy1 = pickletools.optimize(data.replace(b"\x8c\x13numpy._core.numeric", b"\x8c\x12numpy.core.numeric"))
    assert b"numpy.core.numeric" in numpy1  # (optimize re-frames after the 1-byte shorter module name)
    for name, content in (("p5.pkl", data), ("p5_numpy1.pkl", numpy1)):
        (tmp_path / name).write_bytes(content)
        target = torch.nn.Linear(3, 2)
        Checkpointer(target).load(str(tmp_path / name))
        torch.testing.assert_close(target.weight, source.weight)


def test_corrupt_and_truncated_checkpoints_are_named(tmp_path):
    model = torch.nn.Linear(2, 2)
    good = str(tmp_path / "good.pth")
    torch.save({"model": model.state_dict()}, good)
    data = open(good, "rb").read()
    for name, content in (("truncated.pth", data[: len(data) // 2]), ("garbage.pth", b"not a checkpoint"),
                          ("truncated.pkl", pickle.dumps({"model": {}})[:-3])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointLoadError, match=f"'{tmp_path / name}' cannot be read: it is corrupt, truncated"):
            Checkpointer(torch.nn.Linear(2, 2)).load(str(tmp_path / name))
    with pytest.raises(CheckpointLoadError, match="tensor.pth' holds a Tensor, not a dict"):
        torch.save(torch.zeros(2), str(tmp_path / "tensor.pth"))
        Checkpointer(torch.nn.Linear(2, 2)).load(str(tmp_path / "tensor.pth"))


def test_a_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    checkpointer = Checkpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_final", iteration=1)
    before = file_sha256(str(tmp_path / "model_final.pth"))
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):  # half a file written, then the process "dies"
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final", iteration=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]  # no temporary left behind
    assert file_sha256(str(tmp_path / "model_final.pth")) == before
    assert Checkpointer(torch.nn.Linear(2, 2)).load(str(tmp_path / "model_final.pth"))["iteration"] == 1
    checkpointer.save("model_0000002", iteration=2)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000002.pth")


def _write_configs(tmp_path):
    flag = str(tmp_path / "code_ran")
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'_BASE_: "{REPO}/configs/demo.yaml"\nOUTPUT_DIR: !!python/object/apply:os.mkdir ["{flag}"]\n')
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "evil.yaml"\nSEED: 3\n')
    return str(evil), str(child), flag


def test_config_python_tags_are_refused_and_base_chains_work(tmp_path):
    evil, child, flag = _write_configs(tmp_path)
    for path in (evil, child):  # directly, and through a _BASE_
        cfg = get_cfg()
        add_ldvc_config(cfg)
        with pytest.raises(ValueError, match=r"Config '.*evil.yaml' line 2: .*python/object/apply:os.mkdir.*refused"):
            load_config_file(cfg, path)
        with pytest.raises(ValueError, match="evil.yaml' line 2"):
            load_config(path)  # the predictor and every tool
    assert not os.path.exists(flag)
    safe = tmp_path / "safe.yaml"
    safe.write_text('_BASE_: "evil.yaml"\n')
    (tmp_path / "evil.yaml").write_text(f'_BASE_: "{REPO}/configs/demo.yaml"\nOUTPUT_DIR: "x"\n')
    (tmp_path / "child.yaml").rename(tmp_path / "unused.yaml")
    cfg = load_config(str(safe))
    assert cfg.OUTPUT_DIR == "x" and cfg.MODEL.META_ARCHITECTURE == "LDVC"  # two levels of _BASE_ merged
