# `make demo` runs the main job, `make test` the test suite; each creates .venv
# and installs everything (pinned in requirements.txt, detectron2 included) first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MAX_JOBS ?= 2
export MAX_JOBS

CSRC := $(shell find d2ext/csrc -type f)

.PHONY: install test test-quick lint format demo study bench neon-trees trees clean

$(VENV)/.requirements: requirements.txt tools/install_detectron2.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) tools/install_detectron2.py
	touch $@

# Builds d2ext._C in place; see setup.py for FORCE_CUDA, CUDA_HOME, TORCH_CUDA_ARCH_LIST.
$(VENV)/.built: $(VENV)/.requirements setup.py $(CSRC)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.built

# Every test (CI runs this); `make test-quick` leaves out the tests marked slow
# (training, compiling, AOTInductor, tools end to end): the edit loop's check.
# Both run in TEST_WORKERS pytest-xdist workers (default one per core, at most 4,
# for memory; 0: in this process), each with its share of the cores (tests/conftest.py).
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
PYTEST := $(PY) -m pytest tests -n $(TEST_WORKERS)

test: install
	$(PYTEST) --durations=20

test-quick: install
	$(PYTEST) -m "not slow" --durations=10

# Formatting and lint rules of ruff.toml (black/isort/flake8 rules, line length 100);
# `make format` applies the formatter and the safe fixes.
lint: $(VENV)/.requirements
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.requirements
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The main job: train the small model on the synthetic shapes dataset (generated
# on first use) on the CPU, then evaluate it with COCOEvaluator.
demo: install
	$(PY) tools/lazyconfig_train_net.py --config-file configs/synthetic/deformable_detr_tiny.py

# The paper's claims measured (docs/study.md): DETR, DETR+, Faster R-CNN + FPN and
# the four Deformable DETR variants trained on the shapes benchmark, evaluated every
# epoch; results in output/study. Rerun to continue an interrupted study.
study: install
	$(PY) tools/study.py --output output/study

# Speed and memory of the MSDA op's backends (see docs/benchmarks.md).
bench: install
	$(PY) tools/benchmark_msda.py

# The NEON tree-crown images (docs/real_images.md) in D2EXT_DATASETS/neon_trees: the
# deepforest wheel downloaded by pip (not installed), two images extracted and checked.
neon-trees: install
	$(PY) tools/datasets/prepare_neon_trees.py

# Tree crowns (docs/real_images.md): Faster R-CNN + FPN and Deformable DETR trained on
# the NEON image's tiles, evaluated on the whole validation image; results in
# output/tree_crowns. Rerun to continue an interrupted experiment.
trees: install
	$(PY) tools/tree_crowns.py --output output/tree_crowns

clean:
	rm -rf build d2ext/_C*.so *.egg-info
