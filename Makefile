# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the package with all extras on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
# torch/torchvision must be a matching pair (a mismatched torchvision breaks `import diffusers`).
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[eval,text,dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m saq_lightning demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check saq_lightning tests benchmarks

clean-venv:
	rm -rf $(VENV)
