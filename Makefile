# Quick start (README.md): `make demo` and `make test`; each first runs `make setup`.
PYTHON ?= python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test app gpu-check gpu-check-dry

# Installs what a fresh machine lacks, keeping what is there: PyTorch (only if missing), detectron2
# (an existing installation is kept; otherwise v0.6's Python code, tools/install_detectron2.py),
# then ldvc_d2 itself in editable mode with its test extras.
setup:
	@$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PYTHON) -m pip install $(TORCH_SPEC)
	$(PYTHON) tools/install_detectron2.py
	$(PYTHON) -m pip install -q -e ".[test]"

# The main job: LDVC on the embedded synthetic shapes dataset, CPU, then the zero-shot metrics.
demo: setup
	$(PYTHON) train_net.py --config-file configs/demo.yaml

# The suite runs in TEST_WORKERS processes (pytest-xdist; one file per worker at a time, so a file's shared
# fixtures are built once), each single-threaded so the workers do not oversubscribe the cores; the ten
# slowest tests are listed at the end. One file on its own: python -m pytest -q tests/test_x.py
TEST_WORKERS ?= auto
test: setup
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10 tests

# The browser app (docs/app.md): your image, any vocabulary, the methods that can run here side by side.
# Serves on 127.0.0.1; `make app APP_ARGS="--port 7861"` passes options (python -m ldvc_d2.app --help).
APP_ARGS ?=
app: setup
	$(PYTHON) -m ldvc_d2.app $(APP_ARGS)

# The prepared GPU check (docs/speed.md): every method trains and evaluates in fp32 / fp16 / bf16, CLIPtrase
# at 336 px, the ONNX export on onnxruntime, and tools/benchmark_speed.py --device cuda; under 8 minutes on
# one GPU. Writes output/gpu_check/gpu_check.json and gpu_check.md. gpu-check-dry: the same code on the CPU.
gpu-check:
	$(PYTHON) tools/gpu_check.py --output output/gpu_check

gpu-check-dry:
	$(PYTHON) tools/gpu_check.py --dry-run --output output/gpu_check_dry
