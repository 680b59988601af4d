# Entry points. Each target first installs what it needs into its own virtual environment.
#   make demo       the main job on the embedded mini-Pythia suite
#   make test       the test suite (TransformerLens 3.9: HookedTransformer and TransformerBridge)
#   make test-tl4   the test suite again under TransformerLens 4 (TransformerBridge only)
PYTHON ?= python3
TL ?= 3.9.0
VENV ?= .venv
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: demo test test-tl4 install clean

install: $(VENV)/.installed-tl-$(TL)

$(VENV)/.installed-tl-$(TL): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -c constraints.txt -e ".[test]" "transformer-lens==$(TL)"
	rm -f $(VENV)/.installed-tl-*
	touch $@

demo: install
	$(VENV)/bin/pythia-dynamics demo

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-tl4:
	$(MAKE) test VENV=.venv-tl4 TL=4.3.0

clean:
	rm -rf .venv .venv-tl4 .pytest_cache
