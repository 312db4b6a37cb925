# centerexp: every target bootstraps its own virtualenv (.venv) when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the builds this project is tested with (pip finds them offline here).
TORCH_PIP ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed-stamp

EXPERIMENT ?= v1
PROFILE ?= full
SEEDS ?=
RUNS ?= runs

.PHONY: install install-browser test test-browser screenshot test-portable drift test-slurm lint format reproduce bench parity parity-conv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Two pytest workers: the suite is mostly single-threaded Python and matplotlib (6 min on a 2-core Xeon).
PYTEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS)

# Debian's Chromium for the real-browser test of `centerexp board` (tests/test_browser.py; make test
# skips that file on a machine without it).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
install-browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }

test-browser: install
	CENTEREXP_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q tests/test_browser.py

# docs/board.png, the README's picture of `centerexp board runs/reference/quick`, taken by the browser test.
screenshot: install
	CENTEREXP_REQUIRE_BROWSER=1 CENTEREXP_SCREENSHOT=docs/board.png $(BIN)/python -m pytest -q tests/test_browser.py

# The determinism, resume, fault, launch and parity tests (with a real-MNIST conv run among them)
# again under other code paths of this CPU, so that a CPU the suite has never met cannot fail it:
# oneDNN without AMX/AVX-512, ATen's scalar path, one thread. About 14 minutes on 2 cores.
PORTABLE_TESTS := tests/test_reliability.py tests/test_faults.py tests/test_launch.py tests/test_reproduce.py tests/test_runtime.py
test-portable: install
	ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) $(PORTABLE_TESTS)
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) $(PORTABLE_TESTS)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) $(PORTABLE_TESTS)

# How far a real conv run's numbers move with the thread count and the CPU code path (prints tables).
drift: install
	$(BIN)/python tests/portable/drift.py

# reproduce --launcher slurm on a real single-node Slurm cluster started from a temp dir (needs root;
# installs Debian's slurm-wlm and munge when missing). A few minutes; not part of `make test`.
test-slurm: install
	tests/slurm/install.sh
	CENTEREXP_SLURM=1 $(BIN)/python -m pytest -q -m slurm tests/test_slurm.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Train an experiment's arms over its profile's seeds (SEEDS=N to change), then judge its claims:
# runs/EXPERIMENT/PROFILE/report.md. `make reproduce PROFILE=quick`, `make reproduce EXPERIMENT=center_vs_softmax`.
reproduce: install
	$(BIN)/centerexp reproduce $(EXPERIMENT) --profile $(PROFILE) $(if $(SEEDS),--seeds $(SEEDS)) --runs-dir $(RUNS)/$(EXPERIMENT)/$(PROFILE)

bench: install
	$(BIN)/centerexp bench

# bf16 vs fp32 on V1.0, paired seeds: runs/parity/parity.json
parity: install
	$(BIN)/centerexp parity configs/v1_0.yaml $(if $(SEEDS),--seeds $(SEEDS)) --runs-dir $(RUNS)/parity -q

# train.conv_algo auto vs library on V1.0, paired seeds: runs/parity-conv/parity.json
parity-conv: install
	$(BIN)/centerexp parity configs/v1_0.yaml --compare conv $(if $(SEEDS),--seeds $(SEEDS)) --runs-dir $(RUNS)/parity-conv -q $(if $(EPOCHS),--set train.epochs=$(EPOCHS))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
