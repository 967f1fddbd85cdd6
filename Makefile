# Two commands set everything up on a fresh machine:
#   make demo   create .venv with the pinned stack (torch first), then run the demo
#   make test   the same set-up, then ruff and the test suite
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.mmcals-installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

# torch goes first and pinned: an unpinned torch pulled in by another package would be a
# multi-GB CUDA download here (stack.md). A GPU user may set TORCH_VERSION to their build.
$(STAMP): pyproject.toml setup.py requirements/lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements/lock.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/demo.py --work-dir work_dirs/demo

test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) work_dirs build *.egg-info mmcals/.mim
