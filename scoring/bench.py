"""`scoring bench`: rows/s of the engine against the alternatives, measured in one run, reported as ratios.

Every path reads the same Delta snapshot (generated: `rows` x 20 float32 features, 8 date partitions) and writes the
same output shape (key, ds, prediction, lineage columns) with the same Delta writer. Models: ``tiny`` (a linear
regression) and ``heavy`` (an MLP with two hidden layers of 256), both registered as ONNX.

- ``jvm-copy``: no Python at all; the prediction is a copy of one feature. The ceiling of a Spark job.
- ``floor``: the no-model floor: the engine's exact path (key and features to Python workers in an Arrow UDF, a struct
  of predictions back) with a "model" that returns its first feature.
- ``floor-mapInArrow``: whole rows (key, ds, features) through ``mapInArrow`` and back, no model: the other way to
  reach Python, for comparison.
- ``onnxruntime``: the model alone, no Spark: onnxruntime on the same 10,000-row batches from memory, two threads.
- ``embedded``: the engine with the model in each Python worker.
- ``spark_udf``: ``mlflow.pyfunc.spark_udf(env_manager="local")`` on the same registered model.
- ``triton-grpc`` / ``triton-http`` / ``triton-grpc-shm``: the engine with the model in a local Triton sidecar
  (Python backend running onnxruntime, 2 instances), default request size and two requests in flight.
- ``triton-grpc-b<rows>-i<inflight>``: the sweep of request size and requests in flight.
- ``run``: ``scoring.run`` end to end (resolve, pin, count, probe, score, write), tiny model.
- ``run+gates``: the same with an input gate (not_null, between) and an output gate (not_null, mean_between):
  the cost of Great Expectations validation on the Spark DataFrame.

Each path runs once to warm up (not counted), then `repeat` times, interleaved; medians are reported.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import functools
import itertools
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

N_FEATURES = 20
BATCH_ROWS = 10_000
MODELS = {"tiny": (), "heavy": (256, 256)}
SWEEP = [(b, i) for b in (2_048, 10_000) for i in (1, 2, 4)]


class _FirstFeature:
    """The floor's "model": returns the first feature as the prediction, no computation."""

    def predict(self, features: pa.RecordBatch) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([features.column(0)], names=[columns.PREDICTION])


@dataclasses.dataclass(frozen=True)
class IdentitySpec:
    """A runtime spec for the no-model floor: the engine's exact path with a model that does nothing."""

    model_uri: str = "identity"

    def create(self) -> _FirstFeature:
        return _FirstFeature()


def _identity_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The whole-row mapInArrow floor's Python step: key, ds and one feature back, no model."""
    for batch in batches:
        yield pa.RecordBatch.from_arrays(
            [batch.column("customer_id"), batch.column("ds"), batch.column("f00")],
            names=["customer_id", "ds", columns.PREDICTION],
        )


@dataclasses.dataclass
class Bench:
    spark: object
    input_table: str
    tracking_uri: str
    workdir: Path
    rows: int
    models: dict[str, object]
    """model key -> ModelRef"""


def _register_models(workdir: Path, keys: list[str]) -> dict[str, object]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from scoring.adapters.registry import resolve_model

    demo.ensure_experiment(workdir, "scoring-bench")
    client = MlflowClient()
    features = demo.feature_names(N_FEATURES)
    refs = {}
    for key in keys:
        name = f"bench_{key}"
        try:
            client.get_model_version_by_alias(name, "bench")
        except MlflowException:
            table = demo.make_features(5000, n_features=N_FEATURES)
            demo.register(
                demo.train_regressor(table, features, hidden=MODELS[key]), table, features, name=name, alias="bench"
            )
        refs[key] = resolve_model(f"models:/{name}@bench", demo.tracking_uri_for(workdir))
    return refs


def _prepare(rows: int, workdir: Path, keys: list[str]) -> Bench:
    from scoring.adapters.spark import get_session

    workdir.mkdir(parents=True, exist_ok=True)
    table_path = workdir / f"input-{rows}"
    if not (table_path / "_delta_log").exists():
        demo.write_delta(table_path, demo.make_features(rows, n_features=N_FEATURES, days=8))
    models = _register_models(workdir, keys)
    spark = get_session(
        None, {"spark.sql.execution.arrow.maxRecordsPerBatch": str(BATCH_ROWS)}, app_name="scoring-bench"
    )
    spark.sparkContext.setLogLevel("ERROR")
    return Bench(spark, str(table_path), demo.tracking_uri_for(workdir), workdir, rows, models)


def _write(df, path: Path) -> None:
    """The paths' common sink: a dynamic partition overwrite (the engine's write before scoped re-runs), so that
    every path pays the same write and the ``run`` / ``run-first-write`` paths show what the scoped replace costs."""
    (
        df.write.format("delta")
        .mode("overwrite")
        .partitionBy("ds")
        .option("partitionOverwriteMode", "dynamic")
        .option("userMetadata", '{"bench": true}')
        .save(str(path))
    )


def _paths(bench: Bench, chosen: set[str] | None, triton_url: dict[str, str] | None) -> dict[str, Callable[[], None]]:
    import mlflow.pyfunc
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, FloatType, LongType, StringType, StructField, StructType

    from scoring import build_job_config, run
    from scoring.adapters.embedded import EmbeddedSpec
    from scoring.adapters.spark import probe_outputs, score_dataframe
    from scoring.adapters.triton import TritonSpec
    from scoring.core.score import ScoringSpec
    from scoring.core.stamp import Lineage

    spark = bench.spark
    features = demo.feature_names(N_FEATURES)

    def read():
        return spark.read.format("delta").load(bench.input_table).select("customer_id", "ds", *features)

    out = bench.workdir / "out"
    paths: dict[str, Callable[[], None]] = {}

    def want(name: str) -> bool:
        return chosen is None or name in chosen or name.split("/", 1)[-1] in chosen

    def stamped(df, ref):
        lineage = Lineage(ref.name, ref.version, ref.uri, 0, "bench", dt.datetime.now(dt.UTC).replace(microsecond=0))
        return df.withColumns({n: F.lit(v) for n, v in lineage.values().items()}), lineage

    first = next(iter(bench.models.values()))
    if want("jvm-copy"):
        paths["jvm-copy"] = lambda: _write(
            stamped(read().select("customer_id", "ds", F.col("f00").alias(columns.PREDICTION)), first)[0], out / "jvm"
        )
    floor_schema = StructType(
        [
            StructField("customer_id", LongType()),
            StructField("ds", StringType()),
            StructField(columns.PREDICTION, FloatType()),
        ]
    )
    if want("floor-mapInArrow"):
        paths["floor-mapInArrow"] = lambda: _write(
            stamped(read().mapInArrow(_identity_partition, floor_schema), first)[0], out / "floor-mapInArrow"
        )
    if want("floor"):
        identity = ScoringSpec(
            tuple(features),
            ("customer_id", "ds"),
            ("customer_id",),
            "identity",
            pa.schema([(columns.PREDICTION, pa.float32())]),
        )
        floor_lineage = stamped(read(), first)[1]
        paths["floor"] = lambda: _write(score_dataframe(read(), identity, IdentitySpec(), floor_lineage), out / "floor")

    for key, ref in bench.models.items():
        spec = ScoringSpec(tuple(features), ("customer_id", "ds"), ("customer_id",), ref.uri)
        embedded_spec = EmbeddedSpec(
            ref.uri, ref.local_path, ref.flavors, tuple(features), 1, ref.tracking_uri, ref.registry_uri
        )
        spec = dataclasses.replace(spec, output_schema=probe_outputs(read().limit(16).toArrow(), spec, embedded_spec))
        lineage = stamped(read(), ref)[1]

        def engine(predictor_spec, target: Path, spec=spec, lineage=lineage) -> Callable[[], None]:
            return lambda: _write(score_dataframe(read(), spec, predictor_spec, lineage), target)

        if want(f"{key}/onnxruntime"):
            paths[f"{key}/onnxruntime"] = _raw_onnxruntime(ref, bench)
        if want(f"{key}/embedded"):
            paths[f"{key}/embedded"] = engine(embedded_spec, out / f"{key}-embedded")
        if want(f"{key}/spark_udf"):
            udf = mlflow.pyfunc.spark_udf(spark, ref.uri, result_type=DoubleType(), env_manager="local")

            def spark_udf(udf=udf, ref=ref, key=key) -> None:
                df = read().select(
                    "customer_id", "ds", udf(F.struct(*features)).cast(FloatType()).alias(columns.PREDICTION)
                )
                _write(stamped(df, ref)[0], out / f"{key}-spark_udf")

            paths[f"{key}/spark_udf"] = spark_udf
        if triton_url is not None:
            variants = {
                "triton-grpc": ("grpc", "none", BATCH_ROWS, 2),
                "triton-http": ("http", "none", BATCH_ROWS, 2),
                "triton-grpc-shm": ("grpc", "system", BATCH_ROWS, 2),
            }
            variants |= {f"triton-grpc-b{b}-i{i}": ("grpc", "none", b, i) for b, i in SWEEP}
            for name, (protocol, shm, rows, inflight) in variants.items():
                if want(f"{key}/{name}"):
                    triton_spec = TritonSpec(
                        ref.uri,
                        ref.name,
                        ref.version,
                        tuple(features),
                        triton_url[protocol],
                        protocol,
                        shm,
                        60.0,
                        3,
                        rows,
                        inflight,
                    )
                    paths[f"{key}/{name}"] = engine(triton_spec, out / f"{key}-{name}")
    if "tiny" in bench.models:
        ref = bench.models["tiny"]

        def job(name: str, **sections):
            return build_job_config(
                {
                    "name": name,
                    "input": {"table": bench.input_table, "key": "customer_id"},
                    "model": {"uri": ref.uri, "tracking_uri": bench.tracking_uri},
                    "output": {"table": str(out / name), "partition_by": ["ds"]},
                    "runtime": {"batch_rows": BATCH_ROWS},
                    **sections,
                }
            )

        # a typical pair of gates: two row-level input checks, two output checks
        gates = {
            "input": {
                "expectations": [
                    {"type": "not_null", "column": "f00"},
                    {"type": "between", "column": "f01", "min": -10, "max": 10},
                ]
            },
            "output": {
                "expectations": [
                    {"type": "not_null", "column": columns.PREDICTION},
                    {"type": "mean_between", "column": columns.PREDICTION, "min": -1, "max": 1},
                ]
            },
        }
        for name, config in (("run", job("run")), ("run+gates", job("run-gates", quality=gates))):
            if want(name):
                # from the second repetition on, a re-run over the same output: the scoped replace (a MERGE)
                paths[name] = functools.partial(run, config, spark=spark)
        if want("run-partial"):
            # a tenth of the keys of every partition re-scored into the `run` output: the MERGE path
            partial = job(
                "run", input={"table": bench.input_table, "key": "customer_id", "where": "customer_id % 10 = 0"}
            )
            paths["run-partial"] = functools.partial(run, partial, spark=spark)
        if want("run-first-write"):
            # every repetition into a new output table: the first write of a run (no MERGE)
            fresh = itertools.count()
            paths["run-first-write"] = lambda: run(job(f"first-{next(fresh)}"), spark=spark)
    return paths


def _raw_onnxruntime(ref, bench: Bench) -> Callable[[], None]:
    """The model alone on the same batches: no Spark, data already in memory, one session per thread."""
    import onnxruntime as ort

    table = demo.make_features(bench.rows, n_features=N_FEATURES, days=8)
    matrix = np.column_stack([table.column(f).to_numpy() for f in demo.feature_names(N_FEATURES)]).astype(np.float32)
    batches = [matrix[i : i + BATCH_ROWS] for i in range(0, len(matrix), BATCH_ROWS)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    path = str(Path(ref.local_path) / "model.onnx")
    sessions = [ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]) for _ in range(2)]

    def go() -> None:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i: sessions[i % 2].run(None, {"X": batches[i]}), range(len(batches))))

    return go


@contextlib.contextmanager
def _sidecar(bench: Bench, enabled: bool) -> Iterator[dict[str, str] | None]:
    if not enabled:
        yield None
        return
    from scoring.adapters import triton_server
    from scoring.adapters.triton_export import export_model
    from scoring.config import TritonModelConfig

    repository = bench.workdir / "repository"
    for ref in bench.models.values():
        export_model(ref, repository, target="python", model_config=TritonModelConfig(instance_count=2))
    with triton_server.running_server(repository) as handle:
        yield {"grpc": handle.grpc_url, "http": handle.http_url}


def _time(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_bench(
    *,
    rows: int,
    repeat: int,
    output: Path,
    workdir: Path,
    only: list[str] | None,
    models: list[str],
    triton: bool,
    console,
) -> dict:
    from rich.progress import Progress

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    bench = _prepare(rows, workdir.resolve(), models)
    with _sidecar(bench, triton) as urls:
        paths = _paths(bench, set(only) if only else None, urls)
        times: dict[str, list[float]] = {p: [] for p in paths}
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("benchmark", total=len(paths) * (repeat + 1))
            for name, fn in paths.items():  # warm-up: JIT, worker start-up, model load; not counted
                progress.update(task, description=f"warm-up {name}")
                _time(fn)
                progress.advance(task)
            for i in range(repeat):  # interleaved, so drift in the machine's speed hits every path alike
                for name, fn in paths.items():
                    progress.update(task, description=f"{name} ({i + 1}/{repeat})")
                    times[name].append(_time(fn))
                    progress.advance(task)
    results = {}
    for name, runs in times.items():
        median = statistics.median(runs)
        results[name] = {
            "median_s": round(median, 3),
            "rows_per_s": round(rows / median),
            "runs_s": [round(t, 3) for t in runs],
        }
    report = {
        "rows": rows,
        "features": N_FEATURES,
        "batch_rows": BATCH_ROWS,
        "repeat": repeat,
        "models": {k: r.uri for k, r in bench.models.items()},
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "versions": {
            p: version(p) for p in ("pyspark", "delta-spark", "mlflow", "onnxruntime", "pyarrow", "tritonclient")
        },
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "paths": results,
        "ratios": _ratios(results),
    }
    output.write_text(json.dumps(report, indent=2))
    _print(console, report)
    return report


def _ratios(results: dict) -> dict[str, float]:
    def rate(name: str) -> float | None:
        return results[name]["rows_per_s"] if name in results else None

    ratios = {}
    if "run" in results and "run+gates" in results:
        ratios["run+gates / run"] = round(results["run+gates"]["rows_per_s"] / results["run"]["rows_per_s"], 3)
    for name in ("run", "run-partial"):  # what the scoped replace costs against a first write (seconds, not rows/s)
        if name in results and "run-first-write" in results:
            ratios[f"{name} seconds / run-first-write seconds"] = round(
                results[name]["median_s"] / results["run-first-write"]["median_s"], 3
            )
    for name in results:
        key, _, path = name.rpartition("/")
        bases = {
            "floor": rate("floor"),
            "embedded": rate(f"{key}/embedded"),
            "onnxruntime": rate(f"{key}/onnxruntime"),
            "spark_udf": rate(f"{key}/spark_udf"),
        }
        for base, value in bases.items():
            if value and not name.endswith(base) and (key or base == "floor"):
                ratios[f"{name} / {base}"] = round(results[name]["rows_per_s"] / value, 3)
    return ratios


def _print(console, report: dict) -> None:
    from rich.table import Table

    results, rows = report["paths"], report["rows"]
    table = Table(
        title=f"{rows:,} rows x {N_FEATURES} features, {report['repeat']} runs each, medians ({report['cores']} cores)"
    )
    for col in ("path", "median s", "rows/s", "vs floor", "vs embedded", "vs spark_udf", "vs onnxruntime"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, r in results.items():
        key = name.rpartition("/")[0]

        def vs(base: str, r=r) -> str:
            return f"{r['rows_per_s'] / results[base]['rows_per_s']:.2f}x" if base in results else "-"

        table.add_row(
            name,
            f"{r['median_s']:.2f}",
            f"{r['rows_per_s']:,}",
            vs("floor"),
            vs(f"{key}/embedded"),
            vs(f"{key}/spark_udf"),
            vs(f"{key}/onnxruntime"),
        )
    if not console.is_terminal:  # a file or a pipe: do not squeeze the table into 80 columns
        from rich.console import Console

        console = Console(file=console.file, width=160)
    console.print(table)
