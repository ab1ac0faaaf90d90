# Two entry points: `make study` (run the whole study) and `make test` (run every test).
# Both create or update .venv first, so a fresh clone needs nothing but Python 3.11 and pip.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= full
DATASET ?= ml-100k
LLM ?= qwen2.5-0.5b
STAMP := $(VENV)/.installed

.PHONY: study test venv clean-artifacts

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
	$(PY) -m pytest -q -ra

clean-artifacts:
	rm -rf artifacts runs
