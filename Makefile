# The two commands of the README: `make demo` and `make test`. Both set up a
# virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv

# graceshell and its runtime dependencies alone: what `make demo` needs.
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --editable . --config-settings editable_mode=compat
	$(VENV)/bin/python -m compileall -q graceshell
	touch $@

# The test set on top (Celery, RQ, Dramatiq, Huey, hypothesis, mkdocs...): what `make test` needs.
$(VENV)/.installed: $(VENV)/.runtime
	$(VENV)/bin/pip install --quiet --editable '.[test]' --config-settings editable_mode=compat
	touch $@

# arq cannot share .venv with Celery (their redis-py versions exclude each
# other): the arq survival tests run its worker from an environment of its own.
ARQ_VENV := .venv-arq

$(ARQ_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(ARQ_VENV)
	$(ARQ_VENV)/bin/pip install --quiet --editable '.[arq]' --config-settings editable_mode=compat
	touch $@

.PHONY: demo test bench fuzz matrix
demo: $(VENV)/.runtime
	bash examples/demo.sh

test: $(VENV)/.installed $(ARQ_VENV)/.installed
	bash tools/install-test-deps
	$(VENV)/bin/python -m pytest

# The full side-by-side benchmark (about 5 minutes); `--smoke` runs in the tests.
bench: $(VENV)/.installed
	bash tools/install-test-deps
	$(VENV)/bin/python benchmarks/run.py --json benchmarks/results.json

# The fuzz tests with 40 times the examples of the suite's derandomized run,
# on new random inputs each time (about half an hour).
fuzz: $(VENV)/.installed
	GRACESHELL_FUZZ=long $(VENV)/bin/python -m pytest tests/test_fuzz_parsers.py tests/test_fuzz_readers.py tests/test_fuzz_cli.py -q

# The survival matrix: every framework and execution model, bare and under
# graceshell, on a real broker; prints the tables of docs' survival page.
matrix: $(VENV)/.installed $(ARQ_VENV)/.installed
	bash tools/install-test-deps
	$(VENV)/bin/python tools/survival_matrix.py
