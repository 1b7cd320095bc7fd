"""Installs ldvc_d2. detectron2 is not on PyPI: install it first (README.md, or `make setup`)."""
from pathlib import Path

from setuptools import find_packages, setup

version = next(
    line.split('"')[1]
    for line in Path("ldvc_d2/__init__.py").read_text().splitlines()
    if line.startswith("__version__")
)

setup(
    name="ldvc_d2",
    version=version,
    description="LDVC (Language-Driven Visual Consensus) zero-shot semantic segmentation for Detectron2",
    long_description=Path("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ldvc_d2", "ldvc_d2.*"]),
    package_data={"ldvc_d2": ["modeling/clip/model_configs/*.json"]},
    python_requires=">=3.9",
    # Lower bounds are the versions this project was tested with (README.md, "Tested versions").
    install_requires=[
        "torch>=2.14",
        "torchvision>=0.29",
        "open_clip_torch>=3.3.0",
        "fvcore>=0.1.5.post20221221",
        "pycocotools>=2.0.11",
        "opencv-python-headless>=5.0",
        "numpy>=2.4",
        "scipy>=1.17",
        "scikit-learn>=1.9",
        "tqdm>=4.70",
        "Pillow>=13.0",
        "matplotlib>=3.11",
    ],
    extras_require={"test": ["pytest>=9.0"]},
)
