# `make run` and `make test` set everything up from a fresh clone: venv, package, Fashion-MNIST.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FORTUNES := /usr/share/games/fortunes/computers

.PHONY: run test bench docs docs-check setup data clean

run: setup data
	$(BIN)/advbench $(ARGS)

test: setup data
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The docs site into site/; --strict: a broken link, anchor or API reference fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Every bash and python example of docs/ and README.md, run as written (tests/test_docs.py; minutes).
docs-check: setup data
	ADVBENCH_DOCS_EXAMPLES=1 $(BIN)/python -m pytest -q tests/test_docs.py $(PYTEST_ARGS)

bench: setup data
	$(BIN)/pip install -q torchattacks
	$(BIN)/python benchmarks/attack_speed.py

setup: $(BIN)/advbench

# The stamp is the console script: it exists once the editable install has succeeded.
$(BIN)/advbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test,docs,yolo,yolov5,timm,robustbench,tensorboard,mlflow,wandb,optuna,nlp,bridge]'  # CI tests the optional adapters and trackers too
	touch $@

# Debian's dataset-fashion-mnist and fortunes where apt-get runs as root; otherwise Fashion-MNIST comes from
# torchvision's download on first use (advbench dataset.download=true), and fortunes must be installed by hand.
data:
	@if [ -f $(FMNIST) ] && [ -f $(FORTUNES) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist fortunes >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist fortunes)) >/dev/null; \
	else echo "Fashion-MNIST or fortunes missing and apt-get not usable as root: see README (data sets)"; fi

clean:
	rm -rf $(VENV) outputs multirun site
