# One-command entry points. Each sets up .venv first (idempotent).
PY := .venv/bin/python

# A local copy of GPT-2's vocabulary beside the checkout (CI, prepared machines) is used when present.
ifneq ($(wildcard ../shared/gpt2-tokenizer/encoder.json),)
export GPT2_TOKENIZER_DIR ?= $(abspath ../shared/gpt2-tokenizer)
endif

# Jupyter refuses to start as root unless told; Docker images and cloud notebooks run as root.
# Kept apart from LAB_ARGS, so `make lab LAB_ARGS="--port 8899"` as root still starts.
LAB_ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_ARGS ?=
# Where `make wheelhouse` puts every wheel set-up needs; set-up installs from it when it exists.
export WHEELHOUSE ?= $(CURDIR)/wheelhouse

.PHONY: help setup setup-test run lab test lint format notebooks figures download wheelhouse clean clean-runs check slides site chat

help:
	@echo "make check      check this machine for the course (works before set-up too)"
	@echo "make setup      create .venv and install requirements.txt (every command below does it first)"
	@echo "make setup-test the same, plus requirements-test.txt (pytest, ruff, codespell)"
	@echo "make run        set up, then run every notebook headless (copies with outputs in build/notebooks/)"
	@echo "make lab        set up, then open the notebooks in JupyterLab (LAB_ARGS=... passes options)"
	@echo "make test       set up (with test packages), then run the whole test suite"
	@echo "make download   fetch the tokenizer and GPT-2 weights ahead of an offline workshop"
	@echo "make wheelhouse download every package set-up needs into wheelhouse/ (for offline machines)"
	@echo "make figures    redraw figures/*.png from code"
	@echo "make notebooks  re-execute notebooks in place (maintainers: refreshes committed outputs)"
	@echo "make slides     reveal.js slides of every notebook in build/slides/ (offline once built)"
	@echo "make site       the course as a static website in build/site/ (offline once built)"
	@echo "make chat       a chat page on your finetuned model at http://127.0.0.1:8000 (CHAT_ARGS=--help)"
	@echo "make lint       ruff (lint + format check), spelling, relative links and figure paths (as CI does)"
	@echo "make format     ruff: fix what it can, then format the code and notebooks"
	@echo "make clean      remove build/ and caches; keeps .cache/ (downloads), runs/ and checkpoints/"
	@echo "make clean-runs DELETE runs/ and checkpoints/: your finetuned models and their answers"

setup:
	@scripts/setup.sh

setup-test:
	@scripts/setup.sh --test

run: setup
	$(PY) scripts/run_notebooks.py --out build/notebooks

# Served from the repository root, so the notebooks' ../figures/ links resolve; opens in notebooks/.
# The root is `.` (Jupyter makes it absolute), never $(CURDIR): a folder name holding $(...), backticks
# or quotes would be read by the shell.
lab: setup
	$(PY) -m jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks $(LAB_ROOT_ARGS) $(LAB_ARGS)

test: setup-test
	$(PY) -m pytest

# Every check runs, and the target fails if any failed (CI shows all problems at once).
lint: setup-test
	@status=0; \
	$(PY) -m ruff check . || status=1; \
	$(PY) -m ruff format --check . || status=1; \
	$(PY) scripts/lint_docs.py spelling || status=1; \
	$(PY) scripts/lint_docs.py links || status=1; \
	exit $$status

format: setup-test
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

notebooks: setup
	$(PY) scripts/run_notebooks.py --inplace $(NB)

figures: setup
	$(PY) scripts/make_figures.py

download: setup
	$(PY) scripts/download.py

wheelhouse:
	@scripts/setup.sh --wheelhouse

# Never deletes what took time to make or fetch: .cache/ (tokenizer, slide assets), wheelhouse/,
# runs/ and checkpoints/ (finetuned models); it says what it kept.
clean:
	rm -rf build .pytest_cache .hypothesis .ruff_cache .jupyter-runtime
	find . -path ./.venv -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -prune \
		-exec rm -rf {} +
	@for d in runs checkpoints; do [ -d $$d ] && echo "clean: kept $$d/ ($$(find $$d -type f | wc -l) files; make clean-runs deletes it)"; done; true

clean-runs:
	rm -rf runs checkpoints

# Uses .venv's Python once set-up has made it, the system's python3 before.
check:
	@$(if $(wildcard $(PY)),$(PY),python3) scripts/check_setup.py

slides: setup
	$(PY) scripts/slides.py --build --out build/slides $(NB)

site: setup
	$(PY) scripts/build_site.py --out build/site $(NB)

# The chat page (chat.py): standard library only, so it needs nothing beyond set-up.
# The room's network: make chat CHAT_ARGS="--host 0.0.0.0" (it warns that anyone there can use it).
chat: setup
	$(PY) chat.py $(CHAT_ARGS)
