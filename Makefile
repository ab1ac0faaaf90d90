# Two entry points: `make study` (run the whole study) and `make test` (run every test).
# Both create or update .venv first, so a fresh clone needs nothing but Python 3.11 and pip.
# `make mutation` mutation-tests the core maths (tests/README.md); MUTANTS='hnlm.cf.losses.*' narrows it.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= full
DATASET ?= ml-100k
LLM ?= qwen2.5-0.5b
STAMP := $(VENV)/.installed
MUTMUT := mutmut==3.8.1
MUTANTS ?=
MUTATION_WORKERS ?= 1
# TEST_WORKERS=2 runs the tests on 2 pytest-xdist workers; tests sharing a session fixture (the notebooks, the
# fine-tuned run) share an xdist_group, and --dist loadgroup keeps each group on one worker.
TEST_WORKERS ?= 1
TEST_PARALLEL := $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup)

.PHONY: study test mutation venv clean-artifacts

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name hnlm --display-name "hnlm (.venv)" >/dev/null
	touch $(STAMP)

study: $(STAMP)
	$(PY) -m hnlm study --profile $(PROFILE) --dataset $(DATASET) --llm $(LLM)

test: $(STAMP)
	$(PY) -m ruff check hnlm tests bench notebooks
	$(PY) -m pytest -q -ra $(TEST_PARALLEL)

# A developer tool, so not in requirements.txt: the target installs its pinned version (a no-op once there).
# One BLAS thread per worker keeps forked workers safe and the machine usable; settings in pyproject.toml
# [tool.mutmut], work in mutants/.
mutation: $(STAMP)
	$(PY) -m pip install -q $(MUTMUT)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 19 $(VENV)/bin/mutmut run --max-children $(MUTATION_WORKERS) $(MUTANTS)
	$(VENV)/bin/mutmut results

clean-artifacts:
	rm -rf artifacts runs
