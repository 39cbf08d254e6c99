# The two commands of the README: `make demo` and `make test`. Both set up a
# virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --editable '.[test]' --config-settings editable_mode=compat
	touch $@

.PHONY: demo test
demo: $(VENV)/.installed
	bash examples/demo.sh

test: $(VENV)/.installed
	bash tools/ensure-redis-server
	$(VENV)/bin/python -m pytest
