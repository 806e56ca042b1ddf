# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.crossdistill-installed
# setup prints one line per step; the tools' output goes to this log (its tail on a failure)
SETUP_LOG := $(VENV)/setup.log
STEP   := bash scripts/setup_step.sh $(SETUP_LOG)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup system-deps demo test test-all lint bench bench-quick clean

setup: system-deps $(STAMP)

system-deps:
	@bash scripts/system_deps.sh $(SETUP_LOG)

# The venv is rebuilt only when pyproject.toml changes. torch is pinned first so the CPU build is
# used where one is offered; the range in pyproject then installs nothing more.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(STEP) "$(PYTHON) -m venv $(VENV)" $(PYTHON) -m venv $(VENV)
	@$(STEP) "pip install --upgrade pip" $(BIN)/pip install -q --upgrade pip
	@$(STEP) "pip install torch==2.13.0" $(BIN)/pip install -q torch==2.13.0
	@$(STEP) "pip install -e .[dev,onnx,text,report,examples,logging,docs,tune]" \
		$(BIN)/pip install -q -e '.[dev,onnx,text,report,examples,logging,docs,tune]'
	@$(STEP) "pip install --no-deps torchdistill==1.1.5 animal-mnist==0.4" \
		$(BIN)/pip install -q --no-deps torchdistill==1.1.5 animal-mnist==0.4
	@touch $(STAMP)

demo: setup
	$(BIN)/python scripts/demo_fashion_mnist.py

# -n auto: a pytest worker per core (at most 4; each test runs one intra-op thread)
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n auto --maxprocesses=4

test: setup
	$(PYTEST)

test-all: setup
	$(PYTEST) -m ''

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

BENCHMARKS := fashion_mnist overhead losses cross_arch loss_zoo store faults scaling text fusion_to_dual cross_modal examples cli bad_inputs throughput

bench: setup
	for b in $(BENCHMARKS); do $(BIN)/python benchmarks/$$b.py || exit 1; done

bench-quick: setup
	for b in $(BENCHMARKS); do $(BIN)/python benchmarks/$$b.py --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
