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
    package_data={"ldvc_d2": ["modeling/clip/model_configs/*.json", "benchmarks/shapes/assets/*.safetensors"]},
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
        "Pillow>=12.3",  # Gradio (the app extra) requires Pillow < 13
        "matplotlib>=3.11",
        "safetensors>=0.8",
    ],
    # Optional extras (lower bounds = the versions tested here). "test" installs all of them, so the
    # suite exercises every method: `pip install -e ".[test]"` (what `make test` runs).
    extras_require={
        "deop": ["transformers>=5.24,<6", "timm>=1.0.31"],
        "c2s": ["transformers>=5.24,<6", "timm>=1.0.31"],
        "export": ["onnx>=1.23.2", "onnxruntime>=1.32", "onnxscript>=0.7.2"],
        "app": ["gradio>=6.31"],
        "test": [
            "pytest>=9.0",
            "pytest-xdist>=3.8",
            "transformers>=5.24,<6",
            "timm>=1.0.31",
            "onnx>=1.23.2",
            "onnxruntime>=1.32",
            "onnxscript>=0.7.2",
            "gradio>=6.31",
            "selenium>=4.51",  # drives the system Chromium in the app's browser tests
        ],
    },
)
