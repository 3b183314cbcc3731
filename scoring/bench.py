"""`scoring bench`: rows/s of the engine against the alternatives, measured in one run, reported as ratios.

Paths, all reading the same Delta snapshot (generated: `rows` x 20 float32 features, 8 date partitions) and writing
the same output shape (key, ds, prediction, lineage columns) with the same Delta writer:

- ``jvm-copy``: no Python at all: the prediction column is a copy of one feature. The ceiling of a Spark job.
- ``floor``: the no-model floor: the same mapInArrow round trip through Python workers as the engine, with an
  identity "model" (the prediction is a copy of one feature). Everything but the model.
- ``embedded``: the engine itself (``scoring.adapters.spark.score_dataframe`` + ``scoring.adapters.delta``), with
  the registered ONNX model in onnxruntime.
- ``spark_udf``: ``mlflow.pyfunc.spark_udf`` on the same registered model, same batch size.
- ``run``: ``scoring.run`` end to end (model resolution, snapshot pinning, count, probe, score, write).

Each path runs `repeat` times (after one warm-up run that is not counted); medians are reported.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa

from scoring import columns, demo

PATHS = ("jvm-copy", "floor", "embedded", "spark_udf", "run")
N_FEATURES = 20
BATCH_ROWS = 10_000


def _identity_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The no-model floor's Python step: same columns in and out as the engine, no model."""
    for batch in batches:
        yield pa.RecordBatch.from_arrays(
            [batch.column("customer_id"), batch.column("ds"), batch.column("f00")],
            names=["customer_id", "ds", columns.PREDICTION],
        )


@dataclasses.dataclass
class Setup:
    spark: object
    input_table: str
    model_uri: str
    tracking_uri: str
    workdir: Path
    rows: int


def _prepare(rows: int, workdir: Path) -> Setup:
    import mlflow

    from scoring.adapters.spark import get_session

    workdir.mkdir(parents=True, exist_ok=True)
    table_path = workdir / f"input-{rows}"
    features = demo.feature_names(N_FEATURES)
    table = None
    if not (table_path / "_delta_log").exists():
        table = demo.make_features(rows, n_features=N_FEATURES, days=8)
        demo.write_delta(table_path, table)
    demo.ensure_experiment(workdir, "scoring-bench")
    from mlflow import MlflowClient

    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias("bench_linear", "bench")
    except mlflow.exceptions.MlflowException:
        table = table if table is not None else demo.make_features(5000, n_features=N_FEATURES)
        model = demo.train_regressor(table, features)
        demo.register(model, table, features, name="bench_linear", alias="bench", flavor="onnx")
        mv = client.get_model_version_by_alias("bench_linear", "bench")
    spark = get_session(None, {"spark.sql.execution.arrow.maxRecordsPerBatch": str(BATCH_ROWS)}, app_name="scoring-bench")
    spark.sparkContext.setLogLevel("ERROR")
    return Setup(spark, str(table_path), f"models:/bench_linear/{mv.version}", demo.tracking_uri_for(workdir), workdir, rows)


def _lineage(setup: Setup, model_version: str):
    from scoring.core.stamp import Lineage

    return Lineage("bench_linear", model_version, setup.model_uri, 0, "bench",
                   dt.datetime.now(dt.UTC).replace(microsecond=0))


def _stamped(df, lineage):
    from pyspark.sql import functions as F

    return df.withColumns({name: F.lit(value) for name, value in lineage.values().items()})


def _write(df, path: Path) -> None:
    from scoring.adapters.delta import write_predictions

    write_predictions(df, str(path), partition_by=["ds"], run_id=f"bench-{time.time_ns()}", metadata={"bench": True})


def _paths(setup: Setup) -> dict[str, Callable[[], None]]:
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, FloatType, LongType, StringType, StructField, StructType

    import mlflow.pyfunc
    from scoring import build_job_config, run
    from scoring.adapters import registry
    from scoring.adapters.embedded import EmbeddedSpec
    from scoring.adapters.spark import probe_outputs, score_dataframe
    from scoring.core.score import ScoringSpec

    spark = setup.spark
    features = demo.feature_names(N_FEATURES)
    read = lambda: spark.read.format("delta").load(setup.input_table)  # noqa: E731
    ref = registry.resolve_model(setup.model_uri, setup.tracking_uri)
    lineage = _lineage(setup, ref.version)
    out = setup.workdir / "out"

    def jvm_copy() -> None:
        df = read().select("customer_id", "ds", F.col("f00").alias(columns.PREDICTION))
        _write(_stamped(df, lineage), out / "jvm-copy")

    floor_schema = StructType([StructField("customer_id", LongType()), StructField("ds", StringType()),
                               StructField(columns.PREDICTION, FloatType())])

    def floor() -> None:
        df = read().select("customer_id", "ds", *features).mapInArrow(_identity_partition, floor_schema)
        _write(_stamped(df, lineage), out / "floor")

    predictor_spec = EmbeddedSpec(ref.uri, ref.local_path, ref.flavors, tuple(features), 1, ref.tracking_uri, ref.registry_uri)
    spec = ScoringSpec(tuple(features), ("customer_id", "ds"), ("customer_id",), ref.uri)
    probe = read().select("customer_id", "ds", *features).limit(16).toArrow()
    spec = dataclasses.replace(spec, output_schema=probe_outputs(probe, spec, predictor_spec))

    def embedded() -> None:
        df = score_dataframe(read().select("customer_id", "ds", *features), spec, predictor_spec, lineage)
        _write(df, out / "embedded")

    udf = mlflow.pyfunc.spark_udf(spark, ref.uri, result_type=DoubleType(), env_manager="local")

    def spark_udf() -> None:
        df = read().select("customer_id", "ds", udf(F.struct(*features)).cast(FloatType()).alias(columns.PREDICTION))
        _write(_stamped(df, lineage), out / "spark_udf")

    config = build_job_config({
        "name": "bench",
        "input": {"table": setup.input_table, "key": "customer_id"},
        "model": {"uri": setup.model_uri, "tracking_uri": setup.tracking_uri},
        "output": {"table": str(out / "run"), "partition_by": ["ds"]},
        "runtime": {"batch_rows": BATCH_ROWS},
    })

    def scoring_run() -> None:
        run(config, spark=spark)

    return {"jvm-copy": jvm_copy, "floor": floor, "embedded": embedded, "spark_udf": spark_udf, "run": scoring_run}


def _time(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_bench(*, rows: int, repeat: int, output: Path, workdir: Path, only: list[str] | None, console) -> dict:
    from rich.progress import Progress
    from rich.table import Table

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    chosen = [p for p in PATHS if not only or p in only]
    setup = _prepare(rows, workdir.resolve())
    paths = _paths(setup)
    times: dict[str, list[float]] = {p: [] for p in chosen}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=len(chosen) * (repeat + 1))
        for name in chosen:  # one warm-up run each (JIT, worker start-up, model load), not counted
            progress.update(task, description=f"warm-up {name}")
            _time(paths[name])
            progress.advance(task)
        for i in range(repeat):  # interleaved, so drift in the machine's speed hits every path alike
            for name in chosen:
                progress.update(task, description=f"{name} ({i + 1}/{repeat})")
                times[name].append(_time(paths[name]))
                progress.advance(task)
    results = {}
    for name in chosen:
        median = statistics.median(times[name])
        results[name] = {"median_s": round(median, 3), "rows_per_s": round(rows / median), "runs_s": [round(t, 3) for t in times[name]]}
    ratios = {}
    if "embedded" in results:
        for base in ("floor", "jvm-copy", "spark_udf"):
            if base in results:
                ratios[f"embedded/{base}"] = round(results["embedded"]["rows_per_s"] / results[base]["rows_per_s"], 3)
    if "run" in results and "embedded" in results:
        ratios["run/embedded"] = round(results["run"]["rows_per_s"] / results["embedded"]["rows_per_s"], 3)
    report = {
        "rows": rows, "features": N_FEATURES, "batch_rows": BATCH_ROWS, "repeat": repeat,
        "model": setup.model_uri, "cores": os.cpu_count(), "machine": platform.machine(),
        "versions": {p: version(p) for p in ("pyspark", "delta-spark", "mlflow", "onnxruntime", "pyarrow")},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "paths": results, "ratios": ratios,
    }
    output.write_text(json.dumps(report, indent=2))
    table = Table(title=f"{rows:,} rows x {N_FEATURES} features, {repeat} runs each, medians ({os.cpu_count()} cores)")
    for col in ("path", "median s", "rows/s", "vs floor", "vs spark_udf"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for name, r in results.items():
        vs_floor = f"{r['rows_per_s'] / results['floor']['rows_per_s']:.2f}x" if "floor" in results else "-"
        vs_udf = f"{r['rows_per_s'] / results['spark_udf']['rows_per_s']:.2f}x" if "spark_udf" in results else "-"
        table.add_row(name, f"{r['median_s']:.2f}", f"{r['rows_per_s']:,}", vs_floor, vs_udf)
    console.print(table)
    console.print(f"written to {output}")
    return report
