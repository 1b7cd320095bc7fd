"""Checkpoints that cannot run code, load completely or not at all, and survive a crash during a save.

Why: a ``.pth`` or ``.pkl`` file is a pickle, and unpickling can call any Python function, so a
downloaded checkpoint given as ``MODEL.WEIGHTS`` could run code. And detectron2 loads whatever
matches, only *warning* about missing, unexpected or wrongly shaped weights, so a wrong checkpoint
evaluates a partly random model with normal-looking metrics.

* :func:`load_checkpoint_file` reads ``.pth`` with ``torch.load(weights_only=True)`` plus an
  allow-list of exactly the non-tensor types detectron2 trainer checkpoints may hold: NumPy arrays,
  dtypes and scalars, also as protocol-5 pickles store arrays (``numpy._core`` paths of NumPy 2 and
  ``numpy.core`` paths of NumPy 1 files). ``.pkl`` files (detectron2 / Caffe2 model zoo) go through a
  restricted unpickler with the same allow-list; :func:`load_zoo_file` reads ``.pkl`` and ``.pyth``
  (pycls) files as detectron2 does. Anything else is refused with an error naming the file and the
  type; setting the environment variable ``LDVC_TRUST_CHECKPOINTS=1`` loads it with full pickle: only
  for files you trust. A corrupt or truncated file gets its own error.
* :class:`Checkpointer` is detectron2's ``DetectionCheckpointer`` (same constructor, plus
  ``partial_load``) using that loader. Every trainable parameter and buffer of the model must be in
  the checkpoint with its shape, and nothing else may be: otherwise :class:`IncompleteWeightsError`
  names the keys. Frozen parameters (the CLIP encoders, built from ``MODEL.CLIP.PRETRAINED``)
  may be absent and then keep those weights. ``partial_load=True`` (config
  ``MODEL.WEIGHTS_PARTIAL_LOAD``) turns the error into a warning. ``load_status`` records what was
  loaded (file, sha256, status) for the metrics file. ``save`` writes to a temporary name, fsyncs and
  renames, and updates ``last_checkpoint`` the same way.
"""
import codecs
import collections
import contextlib
import hashlib
import io
import logging
import os
import pickle
import re
import zipfile
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import urlparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from .utils.io import atomic_path

try:
    from numpy._core import multiarray as _multiarray, numeric as _numeric  # NumPy 2
except ImportError:  # NumPy 1
    from numpy.core import multiarray as _multiarray, numeric as _numeric

__all__ = [
    "TRUST_ENV", "Checkpointer", "CheckpointLoadError", "IncompleteWeightsError", "UnsafeCheckpointError",
    "ZOO_SUFFIXES", "file_sha256", "load_checkpoint_file", "load_zoo_file", "training_free", "trust_checkpoints",
]

logger = logging.getLogger(__name__)
TRUST_ENV = "LDVC_TRUST_CHECKPOINTS"
ZOO_SUFFIXES = (".pkl", ".pyth")  # the files DetectionCheckpointer._load_file reads itself, not through fvcore
# "module.name" as pickles spell them -> the object; NumPy 1 files name numpy.core, NumPy 2 numpy._core.
_ALLOWED = {
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": np.dtype,
    **{f"{m}.multiarray._reconstruct": _multiarray._reconstruct for m in ("numpy.core", "numpy._core")},
    **{f"{m}.multiarray.scalar": _multiarray.scalar for m in ("numpy.core", "numpy._core")},
    # arrays in protocol-5 pickles: frombuffer(bytes, dtype).reshape(shape) (no object dtype from bytes)
    **{f"{m}.numeric._frombuffer": _numeric._frombuffer for m in ("numpy.core", "numpy._core")},
    "collections.OrderedDict": collections.OrderedDict,  # state dicts (torch allows these two itself)
    "_codecs.encode": codecs.encode,  # bytes in protocol-2 pickles
}
# torch.serialization.safe_globals' form, plus the dtype classes (NumPy 2's Float32DType, ...) that
# torch checks when a pickled dtype gets its state.
_SAFE_GLOBALS = [(obj, name) for name, obj in _ALLOWED.items()] + sorted(
    {type(np.dtype(t)) for t in set(np.sctypeDict.values())} - {np.dtype}, key=str)
_TRUST_HINT = (f"If you trust this file, set the environment variable {TRUST_ENV}=1 to load it with full "
               "pickle (this can run any code the file holds: only for files you trust).")


class CheckpointLoadError(RuntimeError):
    """A checkpoint file that cannot be read (corrupt, truncated, not a checkpoint)."""


class UnsafeCheckpointError(CheckpointLoadError):
    """A checkpoint that holds Python objects outside the allow-list."""


class IncompleteWeightsError(ValueError):
    """Checkpoint weights that do not fit the model (missing, unexpected or wrongly shaped keys)."""


def trust_checkpoints() -> bool:
    """True when ``LDVC_TRUST_CHECKPOINTS`` is 1/true/yes: checkpoints may hold any Python object."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _corrupt(path: str, error: BaseException) -> CheckpointLoadError:
    return CheckpointLoadError(
        f"Checkpoint '{path}' cannot be read: it is corrupt, truncated or not a checkpoint "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Copy it again or "
        "point MODEL.WEIGHTS at another file.")


class _SafeUnpickler(pickle.Unpickler):
    """Plain containers, numbers, strings and NumPy arrays/dtypes/scalars; no other global."""

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key in _ALLOWED:
            return _ALLOWED[key]
        raise UnsafeCheckpointError(f"type {key}")


def _load_pkl(path: str) -> Any:
    with open(path, "rb") as f:
        data = f.read()
    if trust_checkpoints():
        logger.warning(f"{TRUST_ENV} is set: loading '{path}' with full pickle.")
        return pickle.loads(data, encoding="latin1")
    try:
        return _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"Checkpoint '{path}' holds a Python object of {e}, which ldvc_d2 does not "
                                    f"load (only tensors, NumPy arrays and plain containers). {_TRUST_HINT}") from None
    except Exception as e:  # pickle raises many types on damaged data
        raise _corrupt(path, e) from e


def _unsafe_globals(path: str, message: str) -> List[str]:
    """The disallowed types in a ``torch.save`` file (zip format), else the one the error names."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        found = []
    if found:
        return sorted(found)
    patterns = (r"GLOBAL (\S+) was not an allowed", r"but got <class '([^']+)'>", r"whose module (\S+) is blocked")
    return [m.group(1) for m in (re.search(p, message) for p in patterns) if m][:1]


def _load_pth(path: str) -> Any:
    if trust_checkpoints():
        logger.warning(f"{TRUST_ENV} is set: loading '{path}' with weights_only=False (full pickle).")
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise _corrupt(path, e) from e
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "Weights only load failed" not in message:
            raise _corrupt(path, e) from e
        types = _unsafe_globals(path, message)
        if not types:  # the restricted unpickler refused the data itself, e.g. a damaged opcode stream
            raise _corrupt(path, e) from e
        raise UnsafeCheckpointError(
            f"Checkpoint '{path}' holds Python objects of type {', '.join(types)}, which ldvc_d2 does not load "
            f"(only tensors, NumPy arrays and plain containers, as detectron2 trainer checkpoints hold). "
            f"{_TRUST_HINT}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        raise _corrupt(path, e) from e


def load_checkpoint_file(path: str) -> Any:
    """The object in a ``.pth`` (torch.save) or ``.pkl`` (pickle) file, loaded without running code."""
    return _load_pkl(path) if path.endswith(".pkl") else _load_pth(path)


def load_zoo_file(filename: str) -> Dict[str, Any]:
    """A ``.pkl`` (detectron2 / Caffe2 model zoo) or ``.pyth`` (pycls, torch.save) file as the dict that
    ``DetectionCheckpointer._load_file`` makes of it, without running code (detectron2 uses plain pickle)."""
    data = load_checkpoint_file(filename)
    if not isinstance(data, dict):
        raise CheckpointLoadError(f"Checkpoint '{filename}' holds a {type(data).__name__}, not a dict of weights.")
    if filename.endswith(".pyth"):
        if not isinstance(data.get("model_state"), dict):
            raise CheckpointLoadError(f"Checkpoint '{filename}' has no 'model_state' (pycls .pyth weights).")
        state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}
    if "model" in data and "__author__" in data:  # detectron2 model zoo format
        return data
    data = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo, as DetectionCheckpointer reads it
    return {"model": {k: v for k, v in data.items() if not k.endswith("_momentum")}, "__author__": "Caffe2",
            "matching_heuristics": True}


@contextlib.contextmanager
def _atomic_file(path: str, mode: str) -> Iterator[Any]:
    """An open file whose content replaces ``path`` only once written and fsynced (utils.io.atomic_path):
    a crash during the write leaves the previous file as it was."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


class Checkpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with safe loading, complete-or-error weights and atomic saves (module
    docstring). ``partial_load``: allow missing/unexpected/misshaped keys with a warning."""

    def __init__(self, model, save_dir: str = "", *, save_to_disk: Optional[bool] = None,
                 partial_load: bool = False, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.partial_load = partial_load
        self.load_status: Dict[str, Any] = {"weights": "", "sha256": None, "status": "not loaded"}

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        self.load_status = {"weights": path or "", "sha256": None,
                            "status": "not loaded (no file given)" if not path else "loading"}
        result = super().load(path, *args, **kwargs)
        local = self._local_weights_file(path) if path else None
        if local:
            self.load_status["sha256"] = file_sha256(local)
        return result

    def _local_weights_file(self, path: str) -> Optional[str]:
        """The local file ``load(path)`` read (None if none): a URL's (``detectron2://``, ``https://``)
        downloaded copy; current detectron2's ``?matching_heuristics=True`` is not part of the name."""
        if not os.path.isfile(path):
            path = self.path_manager.get_local_path(urlparse(path)._replace(query="").geturl())
        return path if os.path.isfile(path) else None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(ZOO_SUFFIXES):
            return load_zoo_file(filename)
        return super()._load_file(filename)  # -> fvcore's _load_file, made safe by ldvc_d2.compat

    def _load_model(self, checkpoint: Any):
        incompatible = super()._load_model(checkpoint)
        params = dict(self.model.named_parameters())
        misshaped = {k for k, _, _ in incompatible.incorrect_shapes}  # fvcore also lists these as missing
        absent = [k for k in incompatible.missing_keys if k not in misshaped]
        missing = [k for k in absent if k not in params or params[k].requires_grad]
        frozen = len(absent) - len(missing)
        problems = []
        if missing:
            problems.append(f"{len(missing)} trainable parameter(s)/buffer(s) missing: {_names(missing)}")
        if incompatible.unexpected_keys:
            problems.append(f"{len(incompatible.unexpected_keys)} unexpected key(s) (not in this model): "
                            f"{_names(incompatible.unexpected_keys)}")
        if incompatible.incorrect_shapes:
            shapes = [f"{k} {tuple(a)} in the file, {tuple(b)} in the model"
                      for k, a, b in incompatible.incorrect_shapes]
            problems.append(f"{len(shapes)} shape mismatch(es): {_names(shapes)}")
        note = f"; {frozen} frozen tensor(s) not in the file keep the MODEL.CLIP.PRETRAINED weights" if frozen else ""
        if not problems:
            self.load_status["status"] = "complete" + note
            return incompatible._replace(missing_keys=[], unexpected_keys=[], incorrect_shapes=[])
        message = f"Weights '{self.load_status['weights']}' do not fit the model of this config: " + "; ".join(problems) + "."
        if not self.partial_load:
            raise IncompleteWeightsError(
                message + " Check that the checkpoint was trained with this config (method, CLIP model, number "
                "of prompts); set MODEL.WEIGHTS_PARTIAL_LOAD True to load the matching part deliberately.")
        logger.warning(message + " Loaded the matching part (MODEL.WEIGHTS_PARTIAL_LOAD True).")
        self.load_status["status"] = "partial: " + "; ".join(problems) + note
        return incompatible._replace(missing_keys=[], unexpected_keys=[], incorrect_shapes=[])

    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's ``save`` (model, checkpointables, extra data -> ``<save_dir>/<name>.pth``), atomic."""
        if not self.save_dir or not self.save_to_disk:
            return
        if "://" in self.save_dir:
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with _atomic_file(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        with _atomic_file(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)


def _names(keys: List[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def training_free(cfg) -> bool:
    """True when the config's meta-architecture declares ``TRAINING_FREE = True`` (it needs no MODEL.WEIGHTS)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    return bool(getattr(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), "TRAINING_FREE", False))
