# One-command entry points. Each sets up .venv first (idempotent).
PY := .venv/bin/python

# A local copy of GPT-2's vocabulary beside the checkout (CI, prepared machines) is used when present.
ifneq ($(wildcard ../shared/gpt2-tokenizer/encoder.json),)
export GPT2_TOKENIZER_DIR ?= $(abspath ../shared/gpt2-tokenizer)
endif

# Jupyter refuses to start as root unless told; Docker images and cloud notebooks run as root.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
# Where `make wheelhouse` puts every wheel set-up needs; set-up installs from it when it exists.
export WHEELHOUSE ?= $(CURDIR)/wheelhouse

.PHONY: help setup setup-test run lab test notebooks figures download wheelhouse clean check slides site chat

help:
	@echo "make run        set up, then run every notebook headless (copies with outputs in build/notebooks/)"
	@echo "make lab        set up, then open the notebooks in JupyterLab (LAB_ARGS=... passes options)"
	@echo "make test       set up (with test packages), then run the whole test suite"
	@echo "make download   fetch the tokenizer and GPT-2 weights ahead of an offline workshop"
	@echo "make wheelhouse download every package set-up needs into wheelhouse/ (for offline machines)"
	@echo "make figures    redraw figures/*.png from code"
	@echo "make notebooks  re-execute notebooks in place (maintainers: refreshes committed outputs)"
	@echo "make check      check this machine for the course (works before set-up too)"
	@echo "make slides     reveal.js slides of every notebook in build/slides/ (offline once built)"
	@echo "make site       the course as a static website in build/site/ (offline once built)"
	@echo "make chat       a chat page on your finetuned model at http://127.0.0.1:8000 (CHAT_ARGS=--help)"

setup:
	@scripts/setup.sh

setup-test:
	@scripts/setup.sh --test

run: setup
	$(PY) scripts/run_notebooks.py --out build/notebooks

# Served from the repository root, so the notebooks' ../figures/ links resolve; opens in notebooks/.
lab: setup
	$(PY) -m jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks $(LAB_ARGS)

test: setup-test
	$(PY) -m pytest

notebooks: setup
	$(PY) scripts/run_notebooks.py --inplace $(NB)

figures: setup
	$(PY) scripts/make_figures.py

download: setup
	$(PY) scripts/download.py

wheelhouse:
	@scripts/setup.sh --wheelhouse

clean:
	rm -rf build .pytest_cache

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
