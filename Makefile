# pfdeploy: every target creates and uses the project venv itself.
# TORCH is installed first. Where pip finds a local CPU wheel (this project's machines) it takes it;
# elsewhere PyPI's Linux torch is the CUDA build: on a CPU-only machine take the CPU build with
#   make TORCH_INDEX=https://download.pytorch.org/whl/cpu ...
# On a GPU machine: make TORCH=torch ...
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-all demo bench gpu-check lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/pfdeploy list
	$(VENV)/bin/pfdeploy deploy r50_hybrid --precision fp32,fp16 --out demo-out/r50_hybrid --verify-samples 4
	$(VENV)/bin/pfdeploy deploy --fixture r50_hybrid_digits --precision fp32,fp16,int8 --out demo-out/r50_hybrid_digits
	$(VENV)/bin/pfdeploy triton demo-out/r50_hybrid_digits/*.onnx --repo demo-out/triton --dynamic-batching

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"  # NNCF, the peer of the OpenVINO section
	$(PY) benchmarks/run.py

# For a bare CUDA machine with a preinstalled torch (no venv, no network): runs the working tree with
# $(PYTHON); the `gpu`/`tensorrt` tests, then the GPU benchmark into docs/gpu-check.{json,md}.
gpu-check:
	$(PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check pfdeploy tests benchmarks scripts

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache demo-out
