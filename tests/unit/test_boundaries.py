"""Outside libraries stay behind scoring/adapters/, except in the places the README names (where Spark expressions,
Great Expectations suites or Airflow operators are built where the data is)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "scoring"
OUTSIDE = {
    "pyspark",
    "delta",
    "deltalake",
    "mlflow",
    "tritonclient",
    "great_expectations",
    "airflow",
    "onnxruntime",
    "onnx",
    "skl2onnx",
    "pytriton",
    "kubernetes",
    "fastapi",
    "starlette",
    "uvicorn",
    "redis",
}
ALLOWED = {
    "adapters",  # one outside library each: the rule
    "tools",  # benchmarks measure the peers (spark_udf, raw onnxruntime, the JVM prototype); demos make a lake and a model
    "modes/batch.py",  # the plan's one-pass aggregation and column checks are Spark expressions
    "modes/stream.py",  # a micro-batch is a Spark DataFrame: its columns, its version range, its event times
    "modes/http_api.py",  # the HTTP layer of the online mode (FastAPI, uvicorn)
    "engine/gates.py",  # kept / set-aside splits are Spark conditions
    "engine/quality.py",  # quarantine frames and bad-row conditions are Spark columns
    "engine/rules_spark.py",  # the Spark evaluator of scoring.core.rules: Column expressions generated from them
    "deploy/scheduling.py",  # the Airflow side
    "deploy/backfill.py",  # the notebook's Spark session
    "deploy/kubernetes.py",  # manifests for the operator
    "deploy/spark_submit.py",  # the spark-submit entry point
    "cli",  # --help must not import them; commands import lazily; doctor checks each outside dependency
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_outside_libraries_are_imported_only_in_adapters_and_the_named_exceptions():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.split("/")[0] in ALLOWED or relative in ALLOWED:
            continue
        used = _imports(path) & OUTSIDE
        if used:
            offenders[relative] = sorted(used)
    assert not offenders, f"outside libraries outside scoring/adapters/: {offenders} (move the call into an adapter)"


def test_the_engine_and_the_core_stay_free_of_outside_libraries_but_for_the_gates():
    for folder in ("core", "engine"):
        for path in (PACKAGE / folder).glob("*.py"):
            if path.name in ("gates.py", "quality.py", "rules_spark.py"):
                continue
            assert not (_imports(path) & OUTSIDE), path
