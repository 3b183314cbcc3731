# Two commands from a fresh clone:  `make demo`  and  `make test`.
# Everything they need is installed here: a virtual environment pinned by constraints.txt, the project itself,
# and (on first Spark start) the Delta Lake jars through Spark's own package resolution (cached in ~/.ivy2.5.2).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo demo-triton test test-fast lint bench doctor clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "scoring needs Python 3.11, found " + sys.version' 
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the pinned stack (skipped when nothing changed)

demo: setup  ## create a demo lake + model + registry under .demo/ and run conf/jobs/demo.yaml
	$(BIN)/scoring demo

demo-triton: setup  ## the demo scored through a local Triton sidecar (conf/jobs/demo-triton.yaml)
	$(BIN)/scoring demo --config conf/jobs/demo-triton.yaml

test: setup  ## the whole suite (real Spark, Delta, MLflow); .ci/run calls this
	$(BIN)/python -m pytest -q

test-fast: setup  ## unit tests only: no Spark, seconds
	$(BIN)/python -m pytest -q -m "not integration"

lint: setup  ## ruff
	$(BIN)/ruff check scoring tests dags

bench: setup  ## throughput of the engine against the floors and mlflow spark_udf (writes bench-results.json)
	$(BIN)/scoring bench

doctor: setup  ## check Java, Spark, the Delta jars and the registry
	$(BIN)/scoring doctor

clean:  ## remove the demo lake and caches (keeps .venv)
	rm -rf .demo .bench .scoring spark-warehouse metastore_db derby.log bench-results.json
