#!/usr/bin/env python
"""Make sure `import detectron2` works, keeping any detectron2 that is already installed.

Users are expected to install the official detectron2 first (any version from 0.6 on); this script
then does nothing. Where no detectron2 is importable, it installs detectron2 v0.6's *Python code*
from the PyPI source distribution ``pb1-detectron2==0.6`` (byte-identical to upstream v0.6, but
shipped without the C++/CUDA sources, so it cannot be built as is). Semantic segmentation does not
use the compiled ops (``detectron2._C``: deformable conv, ROIAlign, NMS...), so the pure-Python
package is enough for ldvc_d2. The package is installed through pip as a regular wheel named
``detectron2`` (version ``0.6``), so ``pip uninstall detectron2`` removes it.

Only the package registry is contacted (``pip download``); nothing else is fetched.

Usage: python tools/install_detectron2.py [--force]
"""
import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

SDIST = "pb1-detectron2==0.6"
# detectron2 v0.6's runtime requirements, minus the ones only used by its tools or by caffe2 export
# (black, future, pydot). tensorboard is kept: DefaultTrainer writes TensorBoard events.
RUNTIME_REQUIRES = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5",
    "iopath>=0.1.7",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]

# detectron2/_C is the compiled extension. Several modules import it at import time (only to use it
# later), so the pure-Python install gets this placeholder: importing works, using an op fails with
# an explanation. collect_env() (logged by default_setup) calls the three version functions.
C_PLACEHOLDER = '''"""Placeholder for detectron2's compiled ops, written by ldvc_d2's tools/install_detectron2.py.

This detectron2 was installed from the pb1-detectron2 source distribution, which has no C++/CUDA
sources. Semantic segmentation does not need the compiled ops; deformable convolution and the fast
COCO evaluator do: install the official detectron2 from its git repository for those.
"""


def get_compiler_version():
    return "not compiled (pure-Python detectron2 install)"


def get_cuda_version():
    return "not compiled"


def has_cuda():
    return False


def __getattr__(name):
    raise ImportError(
        f"detectron2._C.{name} is a compiled op, and this detectron2 was installed without them "
        "(pure-Python install by ldvc_d2). Install the official detectron2 from source to use it."
    )
'''

SETUP_PY = """
from setuptools import setup, find_packages
setup(
    name="detectron2",
    version="0.6",
    description="detectron2 v0.6 Python code (from pb1-detectron2==0.6), without compiled ops",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    install_requires={requires!r},
    python_requires=">=3.7",
)
"""


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="install even if detectron2 imports")
    args = parser.parse_args()

    spec = importlib.util.find_spec("detectron2")
    if spec is not None and not args.force:
        print(f"detectron2 already installed at {os.path.dirname(spec.origin)}; keeping it.")
        return 0
    if importlib.util.find_spec("torch") is None:
        print("error: install PyTorch before detectron2 (see README.md).", file=sys.stderr)
        return 1

    if importlib.util.find_spec("setuptools") is None:  # venvs of Python >= 3.12 come without it
        _pip("install", "setuptools", "wheel")
    with tempfile.TemporaryDirectory(prefix="ldvc_d2_detectron2_") as tmp:
        # --no-build-isolation: the sdist's setup.py imports torch to prepare its metadata.
        _pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
             "--dest", tmp, SDIST)
        archives = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
        if len(archives) != 1:
            print(f"error: expected one source archive of {SDIST} in {tmp}, got {archives}",
                  file=sys.stderr)
            return 1
        with tarfile.open(os.path.join(tmp, archives[0])) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)
        src_root = os.path.join(tmp, archives[0][: -len(".tar.gz")])
        stage = os.path.join(tmp, "stage")
        shutil.copytree(os.path.join(src_root, "detectron2"), os.path.join(stage, "detectron2"))
        with open(os.path.join(stage, "detectron2", "_C.py"), "w") as f:
            f.write(C_PLACEHOLDER)
        with open(os.path.join(stage, "setup.py"), "w") as f:
            f.write(SETUP_PY.format(requires=RUNTIME_REQUIRES))
        _pip("install", "--no-build-isolation", stage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
