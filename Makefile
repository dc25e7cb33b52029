# hybridsweep — `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Local copies of the data and reference weights; used when present, downloaded otherwise.
SHARED ?= ../shared/data
DEMO_ARGS ?= $(if $(wildcard $(SHARED)/cifar10-jpg.tar.gz),\
	model=resnet56 model.weights=$(SHARED)/weights/cifar10_resnet56.pth \
	data=imagefolder data.root=$(SHARED)/cifar10-jpg.tar.gz data.stats=cifar10,\
	model=resnet56 model.weights=reference data=cifar100)
# A short real search: a 3 x 3 grid over the FLOP budget (0.4-0.9) and the depth/width split, L1 criterion,
# 40 fine-tune steps and 1,000 test images a trial: nine distinct architectures, a front of several of them.
DEMO_SEARCH ?= +criterion=l1 search=grid search.study_name=demo search.budgets=null \
	'search.budget_range=[0.4,0.9]' 'search.depth_share=[0,1]' search.grid_points=3 \
	search.orders=null search.criteria=null search.lr=null \
	finetune.epochs=1 finetune.max_steps=40 data.test_subset=1000
EXPERIMENTS := $(basename $(notdir $(filter-out conf/experiment/base_%,$(wildcard conf/experiment/*.yaml))))

.DEFAULT_GOAL := help
.PHONY: help install test demo experiment experiment-report ui dashboard bench lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q 'torch==2.14.1' 'torchvision==0.29.1' || $(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install hybridsweep with the dev extra

test: install lint ## lint, then run the test suite (the same command CI runs)
	$(PY) -m pytest

demo: install ## a short real Optuna search on embedded defaults (SQLite files for MLflow and Optuna, no servers)
	@start=$$(date +%s); $(PY) -m hybridsweep $(DEMO_ARGS) $(DEMO_SEARCH) && \
	echo "demo wall time: $$(( $$(date +%s) - start )) s (load average now: $$(cut -d' ' -f1-3 /proc/loadavg))"
	@echo "browse the runs: make ui    watch the study: make dashboard"

experiment: install ## run what is missing of an experiment, then its table and plots: make experiment NAME=depth_vs_width
	@test -n "$(NAME)" || { echo "make experiment NAME=...: choose one of: $(EXPERIMENTS)"; exit 2; }
	$(PY) -m hybridsweep +experiment=$(NAME) $(ARGS)

experiment-report: install ## rebuild an experiment's table and plots from its committed results.csv (seconds)
	@test -n "$(NAME)" || { echo "make experiment-report NAME=...: choose one of: $(EXPERIMENTS)"; exit 2; }
	$(PY) -m hybridsweep +experiment=$(NAME) task=experiment_report $(ARGS)

ui: install ## MLflow UI on the default SQLite store (http://127.0.0.1:5000)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

dashboard: install ## optuna-dashboard on the default study storage (http://127.0.0.1:8080)
	$(VENV)/bin/optuna-dashboard sqlite:///optuna.db --host 127.0.0.1 --port 8080

bench: install ## the speed benchmarks, quick versions (each prints a side-by-side ratio)
	$(PY) benchmarks/finetune_throughput.py --quick
	$(PY) benchmarks/prune_cost.py --quick
	$(PY) benchmarks/latency_predictor.py --quick
	$(PY) benchmarks/search_efficiency.py --quick

lint: install ## ruff
	$(VENV)/bin/ruff check hybridsweep tests benchmarks

clean: ## remove build outputs, Hydra run folders and local stores (not the cache)
	rm -rf build dist *.egg-info outputs multirun mlruns mlflow.db optuna.db *.journal *.hybridsweep.lock \
		.pytest_cache .ruff_cache
