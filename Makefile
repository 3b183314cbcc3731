# Two commands from a fresh clone:  `make demo`  and  `make test`.
# Everything they need is installed here: a virtual environment pinned by constraints.txt, the project itself,
# and (on first Spark start) the Delta Lake jars through Spark's own package resolution (cached in ~/.ivy2.5.2).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo demo-triton demo-stream demo-serve test test-fast lint bench bench-large bench-stream bench-serve doctor clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "scoring needs Python 3.11, found " + sys.version' 
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the pinned stack (skipped when nothing changed)

demo: setup  ## create a demo lake + model + registry under .demo/ and run conf/jobs/demo.yaml
	$(BIN)/scoring demo

demo-triton: setup  ## the demo scored through a local Triton sidecar (conf/jobs/demo-triton.yaml)
	$(BIN)/scoring demo --config conf/jobs/demo-triton.yaml

demo-stream: setup  ## stream rows appended to a Delta table through the demo model for a few seconds (conf/jobs/stream.yaml)
	$(BIN)/scoring demo-stream

demo-serve: setup  ## serve the demo's scores over HTTP and show a hit, a live answer and a stale key (conf/jobs/serve.yaml)
	$(BIN)/scoring demo-serve

test: setup  ## the whole suite (real Spark, Delta, MLflow); .ci/run calls this
	$(BIN)/python -m pytest -q

test-fast: setup  ## unit tests only: no Spark, seconds
	$(BIN)/python -m pytest -q -m "not integration"

lint: setup  ## ruff
	$(BIN)/ruff check scoring tests dags

bench: setup  ## throughput of every path against the JVM-only references and the peers, 1M rows (writes bench-results.json)
	$(BIN)/scoring bench

bench-large: setup  ## cost growth of the main paths at 1M and 10M rows: fixed seconds, per-row slope, workers' RSS (writes bench-large-results.json)
	$(BIN)/scoring bench --rows 1000000 --rows 10000000 --repeat 3 --model tiny --no-triton \
		--only jvm-copy --only parquet-copy --only tiny/embedded --only tiny/spark_udf --only tiny/predict_batch_udf \
		--output bench-large-results.json

bench-stream: setup  ## streaming lag and throughput, Delta/Kafka -> Delta/Kafka at 10,000 events/s (writes bench-stream-results.json)
	$(BIN)/scoring bench-stream

bench-serve: setup  ## scoring serve's latency, open loop: precomputed, live (embedded, Triton), 100-key batches (writes bench-serve-results.json)
	$(BIN)/scoring bench-serve

# `make demo-cluster`: the demo job on a Spark standalone cluster on loopback (a master, two one-core workers, each
# worker with its own Triton sidecar serving the demo model); the cluster is brought down at the end, even on failure.
CLUSTER_DIR ?= .scoring/cluster

.PHONY: demo-cluster
demo-cluster: setup  ## the demo job on a local Spark standalone cluster, two workers each with its own Triton sidecar (docs/cluster.md)
	$(BIN)/python -c 'from scoring.tools.demo import DEMO_DIR, create_demo; print(create_demo(DEMO_DIR))'
	$(BIN)/scoring cluster up --workers 2 --triton conf/jobs/demo-triton.yaml --state-dir $(CLUSTER_DIR)
	$(BIN)/scoring run conf/jobs/demo-triton.yaml $$($(BIN)/scoring cluster sets --state-dir $(CLUSTER_DIR)) \
		--set output.table=.demo/lake/churn_scores_cluster \
		&& $(BIN)/scoring show .demo/lake/churn_scores_cluster --limit 5 \
		&& $(BIN)/scoring cluster status --state-dir $(CLUSTER_DIR); \
	status=$$?; $(BIN)/scoring cluster down --state-dir $(CLUSTER_DIR); exit $$status

doctor: setup  ## check Java, Spark, the Delta jars and the registry
	$(BIN)/scoring doctor

clean:  ## remove the demo lake and caches (keeps .venv)
	rm -rf .demo .bench .scoring spark-warehouse metastore_db derby.log bench-results.json bench-large-results.json bench-stream-results.json bench-serve-results.json .bench-serve

# `make demo-airflow`: the nightly DAG (conf/jobs/nightly.yaml) for one day, end to end, with a throw-away Airflow
# under $(DEMO_DIR)/airflow (SQLite), the project's dags/ as its DAGs folder, a local[*] Spark connection, and
# spark-submit from the venv's pyspark. DEMO_DATE is the DAG run's logical date: it scores the day before it.
DEMO_DIR  ?= .demo
DEMO_DATE ?= 2026-11-02
DEMO_ROWS ?= 100000
DEMO_ABS   = $(abspath $(DEMO_DIR))
DEMO_ENV   = AIRFLOW_HOME='$(DEMO_ABS)/airflow' \
	AIRFLOW__CORE__DAGS_FOLDER='$(CURDIR)/dags' \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__DATABASE__SQL_ALCHEMY_CONN='sqlite:///$(DEMO_ABS)/airflow/airflow.db' \
	AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[*]"}' \
	SCORING_CONF_DIR='$(CURDIR)/conf/jobs' \
	SCORING_DEMO_DIR='$(DEMO_ABS)' \
	MLFLOW_TRACKING_URI='sqlite:///$(DEMO_ABS)/mlflow.db' \
	SCORING_RETRY_DELAY_S=5 SCORING_SENSOR_POKE_INTERVAL_S=5 SCORING_SENSOR_TIMEOUT_S=60 \
	PATH='$(abspath $(BIN))':"$$PATH"

.PHONY: demo-airflow
demo-airflow: setup  ## the nightly DAG for one day under a throw-away Airflow (.demo/airflow); prints the published run
	@mkdir -p '$(DEMO_ABS)/airflow'
	@$(DEMO_ENV) $(BIN)/python -c 'from pathlib import Path; from scoring.tools.demo import create_demo; \
		print("demo lake and model:", create_demo(Path("$(DEMO_ABS)"), $(DEMO_ROWS)))'
	@echo "airflow db migrate (AIRFLOW_HOME=$(DEMO_ABS)/airflow, log in db-migrate.log)"
	@$(DEMO_ENV) $(BIN)/airflow db migrate > '$(DEMO_ABS)/airflow/db-migrate.log' 2>&1 \
		|| { cat '$(DEMO_ABS)/airflow/db-migrate.log'; exit 1; }
	@echo "airflow dags test scoring__nightly $(DEMO_DATE)"
	@$(DEMO_ENV) $(BIN)/airflow dags test scoring__nightly $(DEMO_DATE)
	@$(DEMO_ENV) $(BIN)/python -c 'from scoring.deploy import scheduling; \
		print(scheduling.describe_latest_run("$(DEMO_ABS)/lake/churn_scores_nightly_runs"))'

# `make jvm`: the JVM-native ONNX scorer prototype (issue 12; docs/jvm-backend.md), not part of `make test` or CI.
# scoring/jvm is compiled with Maven against pyspark's own Spark jars, with a private local repository (never ~/.m2,
# see shared KAFKA.md); only onnxruntime (one 75 MB jar with its native libraries) and Maven's plugins are resolved.
# The two jars land in $(JVM_DIR), the folder scoring.tools.jvm_bench reads (SCORING_JVM_DIR).
JVM_DIR    ?= $(HOME)/.cache/scoring/jvm
MAVEN_REPO ?= $(HOME)/.cache/scoring/m2

.PHONY: jvm
jvm: setup  ## build the JVM-native ONNX scorer prototype into ~/.cache/scoring/jvm (Maven, private repository)
	mvn -q -B -f scoring/jvm/pom.xml -Dmaven.repo.local='$(MAVEN_REPO)' \
		-Dspark.jars.dir="$$($(BIN)/python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')" \
		package
	@mkdir -p '$(JVM_DIR)'
	rm -f '$(JVM_DIR)'/onnxruntime-*.jar
	cp scoring/jvm/target/scoring-jvm.jar scoring/jvm/target/lib/onnxruntime-*.jar '$(JVM_DIR)/'
