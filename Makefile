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
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: \
	$(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); \
	the pinned stack (requirements/lock.txt: numpy 2.4, scipy 1.17) needs Python 3.11+: \
	run make PYTHON=python3.11 ..." >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements/lock.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/demo.py --work-dir work_dirs/demo

# Two test processes, one thread each: most of the suite's time is single-threaded (the
# subprocesses that import mmseg and train tiny models), so two workers use both cores; a
# file's tests stay in one worker so that its module-scoped trainings run once.
PYTEST_WORKERS ?= 2
test: $(STAMP) lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) work_dirs build *.egg-info mmcals/.mim
