# pfdeploy: every target creates and uses the project venv itself.
# On a CPU-only machine TORCH pins the local CPU build; on a GPU machine: make TORCH=torch ...
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-all demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
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
	$(PY) benchmarks/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check pfdeploy tests benchmarks scripts

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache demo-out
