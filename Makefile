# Two commands do all the set-up: `make demo` and `make test`. Each creates or reuses .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# pinned versions (constraints.txt) apply to every install; a change to either file reinstalls
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
PIP    := $(BIN)/python -m pip install --quiet -c constraints.txt

# The project's own environment takes torch/torchvision from the package registry (CPU and GPU alike).
# Some machines point pip's find-links at a CPU-only torch wheel that PyPI's torchvision cannot import against;
# an empty find-links folder of our own overrides that setting (an empty value would not).
NO_WHEELS := $(CURDIR)/$(VENV)/no-find-links
export PIP_FIND_LINKS := $(NO_WHEELS)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo transfer-demo test test-fast measure lab bench gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is needed, found " + sys.version.split()[0] + "; run make PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@mkdir -p $(NO_WHEELS)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP) -e '.[dev]'
	@$(BIN)/python .ci/check_pins.py
	@rm -f $(VENV)/.installed-* && touch $@

# Each demo's report ends with its wall time and the machine; it is kept with its figures as the dated measurement
# docs/measurements/<name>-<UTC date>/ that the docs link (never typed into them).
MEASURED = docs/measurements/$(1)-$(shell date -u +%Y-%m-%d)
keep = mkdir -p $(call MEASURED,$(2)) && cp $(1)/report.md $(1)/*.png $(call MEASURED,$(2))/

demo: $(STAMP)
	$(BIN)/ablate demo
	$(call keep,runs/demo,demo)

# The transfer demo (docs/transfer.md): pre-train on digits 0-4, fine-tune on 5-9.
transfer-demo: $(STAMP)
	$(BIN)/ablate demo --transfer
	$(call keep,runs/transfer_demo_finetune,transfer-demo)

test: $(STAMP)
	$(BIN)/python -m pytest --durations=15

# The loop while working: every module's tests but the slow ones (marked `slow`: sweeps, kills, DDP, notebooks)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" --durations=10

# Test counts and wall times of both tiers on this machine, written by the runs themselves (tests/measure.py)
# into docs/measurements/tests-<date>.md: the numbers the docs link instead of quoting.
measure: $(STAMP)
	ABLATE_MEASURE=docs/measurements $(BIN)/python -m pytest -q -m "not slow"
	ABLATE_MEASURE=docs/measurements $(BIN)/python -m pytest -q

# The analysis notebook on the demo's results (`make demo` first); SOURCE=wandb:ENTITY/PROJECT or another folder.
SOURCE ?= runs/demo
lab: $(STAMP)
	@test -x $(BIN)/jupyter-lab || $(PIP) jupyterlab
	ABLATE_SOURCE=$(SOURCE) $(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/analysis.ipynb

bench: $(STAMP)
	$(BIN)/ablate bench coatnet_0 --set downsample=dw --timm coatnet_0_224 --batch 16 --rounds 10 --channels-last \
		--out docs/measurements/

# The GPU path on this node's GPU (about 8 minutes; see ablations/gpu_check.py). With the project's .venv, or from
# the source tree with a Python that has torch, Lightning, timm, torchmetrics and torchvision: wheels of the rest
# (jsonargparse, docstring-parser, typeshed-client, submitit) placed in .whl/ are installed into .whl/site first.
GPU_PY  ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_OUT ?= gpu-check
WHEELS  := $(wildcard .whl/*.whl)
gpu-check:
	$(if $(WHEELS),$(GPU_PY) -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target .whl/site $(WHEELS))
	PYTHONPATH=$(CURDIR)$(if $(WHEELS),:$(CURDIR)/.whl/site) $(GPU_PY) -m ablations.gpu_check --out $(GPU_OUT)

clean:
	rm -rf $(VENV) .pytest_cache
