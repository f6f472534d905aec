# The two quick-start commands are `make demo` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SRC ?= examples/images
DEST ?= out/examples-archive

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# CPU build of torch first (a local wheel on the project machines; from PyPI elsewhere),
	# so the dependency resolver never pulls the multi-GB CUDA build for a CPU host.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	# The weights are their own distribution (the core wheel has none), built from this tree.
	$(PY) -m pip install -q --disable-pip-version-check ./packaging/pixarc-weights
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,learned]'
	# CompressAI without its declared torchvision / torch-geometric / numpy<2 (unused by the
	# model code pixarc loads; proven by tests/test_compressai_compat.py).
	$(PY) -m pip install -q --disable-pip-version-check --no-deps compressai==1.2.8
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/pixarc archive $(SRC) $(DEST)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/archive_throughput.py

clean:
	rm -rf out .pytest_cache
