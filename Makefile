# Two commands for a fresh machine: `make demo` and `make test`. Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
export DS_ACCELERATOR ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
export DS_BUILD_OPS := 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false
# DeepSpeed JIT-builds small CPU ops; a per-checkout cache keeps checkouts with other venvs from rebuilding them.
# The same place train.py and launch/ use by default: <sys.prefix>/torch_extensions of the venv.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.venv/torch_extensions

.PHONY: venv demo test test-fast lint bench clean

venv: $(VENV)/.installed

# torch first, on its own: with no CUDA we take the CPU wheel; otherwise pip would resolve the
# default (CUDA) build as a dependency of transformers/deepspeed and pull gigabytes.
# deepspeed ships as an sdist whose setup.py imports torch, so it is built without isolation
# against the torch we just installed (isolation would fetch a second, CUDA torch).
# On CPU machines DeepSpeed JIT-builds its shared-memory collectives op (deepspeed_shm_comm) on the first launch,
# and its CPU Adam (cpu_adam) on the first ZeRO-Offload run: minutes each on 2 cores. Both are built here once,
# into TORCH_EXTENSIONS_DIR, so no launch waits for them.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(PY) -m pip install -q torch==$(TORCH_VERSION); \
	else \
	  $(PY) -m pip install -q "torch==$(TORCH_VERSION)+cpu" || \
	  $(PY) -m pip install -q "torch==$(TORCH_VERSION)+cpu" --extra-index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install -q --no-build-isolation -r requirements.lock
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	if [ "$(DS_ACCELERATOR)" = cpu ]; then \
	  $(PY) -c "from deepspeed.accelerator import get_accelerator as a; [a().create_op_builder(b).load() for b in ('ShareMemCommBuilder', 'CPUAdamBuilder')]"; \
	fi
	touch $@

demo: venv
	$(PY) tools/demo.py

# Test processes, one per CPU up to 4: a launch is mostly imports and start-up on one core per process, so two
# run side by side even on 2 cores; more than 4 gains little and multiplies memory.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) bench/decode.py
	$(PY) bench/train_throughput.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
