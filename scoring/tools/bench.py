"""`scoring bench`: rows/s of the engine against the alternatives, measured in one run, reported as ratios.

Every path reads the same Delta snapshot (generated: `rows` x 20 float32 features, 8 date partitions) and writes the
same output shape (key, ds, prediction, lineage columns) with the same Delta writer, except ``parquet-copy``. Models:
``tiny`` (a linear regression) and ``heavy`` (an MLP with two hidden layers of 256), both registered as ONNX.

- ``jvm-copy``: no Python at all; the prediction is the sum of the 20 features (so every feature is read), computed in
  the JVM, with the same lineage and the same Delta writer. The ceiling of a Spark job that scores through Delta.
- ``parquet-copy``: the same JVM-only job from a Parquet copy of the input to Parquet (partitioned by ``ds``), without
  lineage: the floor of any job of this shape.
- ``floor``: the no-model floor: the engine's exact path (key and features to Python workers in an Arrow UDF, a struct
  of predictions back) with a "model" that returns its first feature.
- ``floor-mapInArrow``: whole rows (key, ds, features) through ``mapInArrow`` and back, no model: the other way to
  reach Python, for comparison.
- ``onnxruntime``: the model alone, no Spark: onnxruntime on the same 10,000-row batches from memory, two threads.
- ``embedded``: the engine with the model in each Python worker.
- ``spark_udf``: ``mlflow.pyfunc.spark_udf(env_manager="local")`` on the same registered model.
- ``predict_batch_udf``: ``pyspark.ml.functions.predict_batch_udf`` on ``struct(*features)``, its usual form: a
  ``make_predict_fn`` that opens an onnxruntime session (cached per Python worker by Spark's model cache).
- ``mapInArrow-onnx``: a hand-written ``mapInArrow`` over whole rows with an onnxruntime session cached per Python
  worker (a function of this module, so that workers import it by name).
- ``triton-grpc`` / ``triton-http`` / ``triton-grpc-shm``: the engine with the model in a local Triton sidecar
  (Python backend running onnxruntime, 2 instances), default request size and two requests in flight.
- ``triton-grpc-b<rows>-i<inflight>``: the sweep of request size and requests in flight.
- ``run``: ``scoring.run`` end to end (resolve, pin, count, probe, score, write), tiny model.
- ``run+gates``: the same with an input gate (not_null, between) and an output gate (not_null, mean_between):
  the cost of Great Expectations validation on the Spark DataFrame.

Each path runs once to warm up (not counted), then `repeat` times, interleaved; medians and the spread (min, max) are
reported. With several sizes (``rows``), the repetitions interleave every path at every size, and per path a
least-squares line through time against rows gives the fixed seconds of a run and the seconds per row. Meanwhile a thread of the driver samples
``/proc`` for the RSS of Spark's Python workers (see :class:`WorkerMemory`).
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

from scoring import columns
from scoring.tools import demo

N_FEATURES = 20
BATCH_ROWS = 10_000
MODELS = {"tiny": (), "heavy": (256, 256)}
TENSOR = "tensor"
TENSOR_WIDTH = 64
TENSOR_HIDDEN = 64
ALL_MODELS = (*MODELS, TENSOR)
"""``--model`` choices: the two regressors over 20 scalar features, and ``tensor``: an MLP over one array column
``emb`` (float32[64]) of its own generated input (:func:`tensor_model`)."""
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


def _onnx_file(model_dir: str | Path) -> str:
    return str(Path(model_dir) / "model.onnx")


def _onnx_session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the engine: two workers on two cores, no oversubscription
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


@functools.cache
def _cached_onnx_session(path: str):
    """One session per Python worker (a reused worker keeps this module, so the cache, between tasks)."""
    return _onnx_session(path)


def _onnx_partition(
    path: str, features: tuple[str, ...], batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """The ``mapInArrow-onnx`` path's Python step: whole rows in, key, ds and the model's prediction out."""
    session = _cached_onnx_session(path)
    name = session.get_inputs()[0].name
    for batch in batches:
        if batch.num_rows == 0:
            continue
        matrix = np.column_stack([batch.column(f).to_numpy(zero_copy_only=False) for f in features])
        prediction = session.run(None, {name: matrix.astype(np.float32, copy=False)})[0].reshape(-1)
        yield pa.RecordBatch.from_arrays(
            [batch.column("customer_id"), batch.column("ds"), pa.array(prediction, pa.float32())],
            names=["customer_id", "ds", columns.PREDICTION],
        )


def _make_onnx_predict(path: str) -> Callable[[np.ndarray], np.ndarray]:
    """``predict_batch_udf``'s ``make_predict_fn``: called once per Python worker (Spark caches what it returns)."""
    session = _onnx_session(path)
    name = session.get_inputs()[0].name

    def predict(inputs: np.ndarray) -> np.ndarray:
        return session.run(None, {name: inputs.astype(np.float32, copy=False)})[0].reshape(-1)

    return predict


@dataclasses.dataclass
class Bench:
    spark: object
    input_table: str
    parquet_input: str
    """the same rows as `input_table`, as plain Parquet (for ``parquet-copy``)"""
    tracking_uri: str
    workdir: Path
    out: Path
    """where this size's outputs go, one table (or Parquet folder) per path"""
    rows: int
    models: dict[str, object]
    """model key -> ModelRef (the regressors; the tensor model is in `tensor`)"""
    tensor: object | None = None
    """The tensor model's ModelRef, when it was chosen"""
    tensor_input: str | None = None
    """its input of `rows` rows (key, ds, emb float32[64]), when it was chosen"""


def tensor_model():
    """The bench's tensor model: ``emb`` float [rows, 64] -> ReLU(emb @ W1 + b1) @ W2 + b2 -> ``prediction`` float
    [rows, 1]: a small MLP over an embedding column, built with onnx.helper (fixed weights, nothing downloaded)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(64)
    weights = {
        "W1": rng.normal(scale=0.2, size=(TENSOR_WIDTH, TENSOR_HIDDEN)),
        "B1": rng.normal(scale=0.1, size=(TENSOR_HIDDEN,)),
        "W2": rng.normal(scale=0.2, size=(TENSOR_HIDDEN, 1)),
        "B2": rng.normal(scale=0.1, size=(1,)),
    }
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["emb", "W1"], ["h0"]),
            helper.make_node("Add", ["h0", "B1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h"]),
            helper.make_node("MatMul", ["h", "W2"], ["o0"]),
            helper.make_node("Add", ["o0", "B2"], [columns.PREDICTION]),
        ],
        "bench_tensor",
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", TENSOR_WIDTH])],
        [helper.make_tensor_value_info(columns.PREDICTION, TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def tensor_input(rows: int, days: int = 8, seed: int = 64) -> pa.Table:
    """``customer_id``, ``ds`` and ``emb`` (float32[64] per row, an Arrow list column): the tensor model's input."""
    rng = np.random.default_rng(seed)
    values = pa.array(rng.normal(size=rows * TENSOR_WIDTH).astype(np.float32))
    offsets = pa.array(np.arange(0, (rows + 1) * TENSOR_WIDTH, TENSOR_WIDTH, dtype=np.int32))
    keyed = demo.make_features(rows, n_features=1, days=days, seed=seed).select(["customer_id", "ds"])
    return keyed.append_column("emb", pa.ListArray.from_arrays(offsets, values))


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
            if key == TENSOR:
                import mlflow

                with demo._mlflow_chatter_held(), mlflow.start_run(run_name=f"train-{name}"):
                    info = mlflow.onnx.log_model(tensor_model(), name="model", registered_model_name=name)
                client.set_registered_model_alias(name, "bench", str(info.registered_model_version))
            else:
                table = demo.make_features(5000, n_features=N_FEATURES)
                demo.register(
                    demo.train_regressor(table, features, hidden=MODELS[key]),
                    table,
                    features,
                    name=name,
                    alias="bench",
                )
        refs[key] = resolve_model(f"models:/{name}@bench", demo.tracking_uri_for(workdir))
    return refs


def _session():
    from scoring.adapters.spark import get_session

    spark = get_session(
        None, {"spark.sql.execution.arrow.maxRecordsPerBatch": str(BATCH_ROWS)}, app_name="scoring-bench"
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _prepare(spark, rows: int, workdir: Path, models: dict[str, object]) -> Bench:
    """The input of one size (generated once, kept under `workdir`): a Delta table and its Parquet copy."""
    table_path = workdir / f"input-{rows}"
    if not (table_path / "_delta_log").exists():
        demo.write_delta(table_path, demo.make_features(rows, n_features=N_FEATURES, days=8))
    parquet_path = workdir / f"input-{rows}.parquet"
    if not (parquet_path / "_SUCCESS").exists():
        spark.read.format("delta").load(str(table_path)).write.mode("overwrite").parquet(str(parquet_path))
    out = workdir / "out" / str(rows)
    regressors = {k: r for k, r in models.items() if k != TENSOR}
    bench = Bench(
        spark, str(table_path), str(parquet_path), demo.tracking_uri_for(workdir), workdir, out, rows, regressors
    )
    if TENSOR in models:
        tensor_path = workdir / f"tensor-input-{rows}"
        if not (tensor_path / "_delta_log").exists():
            demo.write_delta(tensor_path, tensor_input(rows))
        bench = dataclasses.replace(bench, tensor=models[TENSOR], tensor_input=str(tensor_path))
    return bench


def _write(df, path: Path) -> None:
    """The paths' common sink: a dynamic partition overwrite (the engine's write before scoped re-runs), so that
    every path pays the same write and the ``run`` / ``run-first-write`` paths show what the scoped replace costs.
    Tables are created as the engine creates its outputs: file statistics on the key only
    (:func:`scoring.adapters.delta.stats_properties`)."""
    from scoring.adapters.delta import stats_properties

    writer = (
        df.write.format("delta")
        .mode("overwrite")
        .partitionBy("ds")
        .option("partitionOverwriteMode", "dynamic")
        .option("userMetadata", '{"bench": true}')
    )
    if not (path / "_delta_log").exists():
        for name, value in stats_properties(("customer_id",), ("ds",)).items():
            writer = writer.option(name, value)
    writer.save(str(path))


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

    out = bench.out
    paths: dict[str, Callable[[], None]] = {}

    def want(name: str) -> bool:
        return chosen is None or name in chosen or name.split("/", 1)[-1] in chosen

    def stamped(df, ref):
        lineage = Lineage(ref.name, ref.version, ref.uri, 0, "bench", dt.datetime.now(dt.UTC).replace(microsecond=0))
        return df.withColumns({n: F.lit(v) for n, v in lineage.values().items()}), lineage

    def feature_sum(df):
        """key, ds and the sum of every feature as the "prediction": a JVM expression that reads all features."""
        total = functools.reduce(lambda a, b: a + b, [F.col(f) for f in features])
        return df.select("customer_id", "ds", total.cast(FloatType()).alias(columns.PREDICTION))

    first = next(iter(bench.models.values()), bench.tensor)
    if want("jvm-copy"):
        paths["jvm-copy"] = lambda: _write(stamped(feature_sum(read()), first)[0], out / "jvm-copy")
    if want("parquet-copy"):
        paths["parquet-copy"] = lambda: (
            feature_sum(spark.read.parquet(bench.parquet_input))
            .write.mode("overwrite")
            .partitionBy("ds")
            .parquet(str(out / "parquet-copy"))
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
        model_file = _onnx_file(ref.local_path)
        if want(f"{key}/predict_batch_udf"):
            from pyspark.ml.functions import predict_batch_udf

            batch_udf = predict_batch_udf(
                functools.partial(_make_onnx_predict, model_file), return_type=FloatType(), batch_size=BATCH_ROWS
            )

            def predict_batch(batch_udf=batch_udf, ref=ref, key=key) -> None:
                df = read().select("customer_id", "ds", batch_udf(F.struct(*features)).alias(columns.PREDICTION))
                _write(stamped(df, ref)[0], out / f"{key}-predict_batch_udf")

            paths[f"{key}/predict_batch_udf"] = predict_batch
        if want(f"{key}/mapInArrow-onnx"):
            scorer = functools.partial(_onnx_partition, model_file, tuple(features))

            def map_in_arrow(scorer=scorer, ref=ref, key=key) -> None:
                df = read().mapInArrow(scorer, floor_schema)
                _write(stamped(df, ref)[0], out / f"{key}-mapInArrow-onnx")

            paths[f"{key}/mapInArrow-onnx"] = map_in_arrow
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
    if bench.tensor is not None:
        paths |= _tensor_paths(bench, want, stamped, triton_url)
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


def _tensor_paths(bench: Bench, want, stamped, triton_url) -> dict[str, Callable[[], None]]:
    """The tensor model's paths over its own input (an ``emb`` float32[64] column): ``tensor/jvm-copy`` (the sum of
    the array's elements in the JVM, same lineage and writer), ``tensor/embedded`` and ``tensor/triton-grpc`` (the
    engine, one [rows, 64] tensor per request)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import FloatType

    from scoring.adapters.embedded import EmbeddedSpec
    from scoring.adapters.spark import probe_outputs, score_dataframe
    from scoring.adapters.triton import TritonSpec
    from scoring.core.score import ScoringSpec

    ref, spark, out = bench.tensor, bench.spark, bench.out

    def read():
        return spark.read.format("delta").load(bench.tensor_input).select("customer_id", "ds", "emb")

    paths: dict[str, Callable[[], None]] = {}
    if want(f"{TENSOR}/jvm-copy"):
        total = F.aggregate("emb", F.lit(0.0), lambda acc, x: acc + x).cast(FloatType()).alias(columns.PREDICTION)
        paths[f"{TENSOR}/jvm-copy"] = lambda: _write(
            stamped(read().select("customer_id", "ds", total), ref)[0], out / f"{TENSOR}-jvm-copy"
        )
    spec = ScoringSpec(("emb",), ("customer_id", "ds"), ("customer_id",), ref.uri)
    embedded_spec = EmbeddedSpec(ref.uri, ref.local_path, ref.flavors, ("emb",), 1, ref.tracking_uri, ref.registry_uri)
    spec = dataclasses.replace(spec, output_schema=probe_outputs(read().limit(16).toArrow(), spec, embedded_spec))
    lineage = stamped(read(), ref)[1]

    def engine(predictor_spec, target: Path) -> Callable[[], None]:
        return lambda: _write(score_dataframe(read(), spec, predictor_spec, lineage), target)

    if want(f"{TENSOR}/embedded"):
        paths[f"{TENSOR}/embedded"] = engine(embedded_spec, out / f"{TENSOR}-embedded")
    if triton_url is not None and want(f"{TENSOR}/triton-grpc"):
        triton_spec = TritonSpec(
            ref.uri, ref.name, ref.version, ("emb",), triton_url["grpc"], "grpc", "none", 60.0, 3, BATCH_ROWS, 2
        )
        paths[f"{TENSOR}/triton-grpc"] = engine(triton_spec, out / f"{TENSOR}-triton-grpc")
    return paths


def _raw_onnxruntime(ref, bench: Bench) -> Callable[[], None]:
    """The model alone on the same batches: no Spark, data already in memory, one session per thread."""
    table = demo.make_features(bench.rows, n_features=N_FEATURES, days=8)
    matrix = np.column_stack([table.column(f).to_numpy() for f in demo.feature_names(N_FEATURES)]).astype(np.float32)
    batches = [matrix[i : i + BATCH_ROWS] for i in range(0, len(matrix), BATCH_ROWS)]
    sessions = [_onnx_session(_onnx_file(ref.local_path)) for _ in range(2)]
    name = sessions[0].get_inputs()[0].name

    def go() -> None:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i: sessions[i % 2].run(None, {name: batches[i]}), range(len(batches))))

    return go


@contextlib.contextmanager
def _sidecar(workdir: Path, models: dict[str, object], enabled: bool) -> Iterator[dict[str, str] | None]:
    if not enabled:
        yield None
        return
    from scoring.adapters.triton_export import export_model
    from scoring.config import TritonModelConfig
    from scoring.launchers import triton_server

    repository = workdir / "repository"
    for ref in models.values():
        export_model(ref, repository, target="python", model_config=TritonModelConfig(instance_count=2))
    with triton_server.running_server(repository) as handle:
        yield {"grpc": handle.grpc_url, "http": handle.http_url}


def fit_line(rows: list[int], seconds: list[float]) -> tuple[float, float]:
    """The least-squares line ``seconds = fixed_s + per_row_s * rows`` through the points; returns
    ``(fixed_s, per_row_s)``. Needs at least two distinct sizes."""
    if len(set(rows)) < 2 or len(rows) != len(seconds):
        raise ValueError(f"a line needs at least two distinct sizes and a time for each, got {rows} and {seconds}")
    mean_x, mean_y = statistics.fmean(rows), statistics.fmean(seconds)
    sxx = sum((x - mean_x) ** 2 for x in rows)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(rows, seconds, strict=True))
    per_row_s = sxy / sxx
    return mean_y - per_row_s * mean_x, per_row_s


@dataclasses.dataclass(frozen=True)
class WorkerPeak:
    """The Python workers' memory over one sampled window."""

    one_mb: float
    """the largest RSS of any one worker"""
    total_mb: float
    """the largest sum of the workers' RSS at one instant (shared copy-on-write pages are counted in each worker)"""
    workers: int
    """workers that ran (used CPU) in the window"""


_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
_MARKERS = (b"pyspark.daemon", b"pyspark/daemon", b"pyspark.worker", b"pyspark/worker")


def _processes() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, CPU ticks used, RSS in MiB), from /proc/<pid>/stat."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        # after the command: state(0) ppid(1) ... utime(11) stime(12) ... rss(21), in pages
        found[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21]) * _PAGE_MB)
    return found


def _is_pyspark(pid: int, cache: dict[int, bool]) -> bool:
    if pid not in cache:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            cmdline = b""
        cache[pid] = any(m in cmdline for m in _MARKERS)
    return cache[pid]


class WorkerMemory:
    """Samples, from a thread of the driver, the RSS of Spark's Python workers: the processes under `root` (the
    Spark JVM by default) whose command is pyspark's daemon or worker and whose parent is one too (on Linux Spark forks
    each worker from ``pyspark.daemon``). Only workers that used CPU during the window count, so that idle workers
    kept from an earlier job do not. Use as a context manager; read :attr:`peak` afterwards."""

    def __init__(self, root: int | None = None, interval_s: float = 0.1) -> None:
        self.root = root if root is not None else spark_jvm_pid()
        self.interval_s = interval_s
        self.peak = WorkerPeak(0.0, 0.0, 0)
        self._samples: list[dict[int, float]] = []
        self._cpu_first: dict[int, int] = {}
        self._cpu_last: dict[int, int] = {}
        self._cmdline: dict[int, bool] = {}
        self._stop = None
        self._thread = None

    def _workers(self) -> dict[int, tuple[int, float]]:
        procs = _processes()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        below, todo = [], list(children.get(self.root, []))
        while todo:
            pid = todo.pop()
            below.append(pid)
            todo.extend(children.get(pid, []))
        return {
            pid: procs[pid][1:]
            for pid in below
            if _is_pyspark(pid, self._cmdline) and _is_pyspark(procs[pid][0], self._cmdline)
        }

    def wait_until_idle(self, quiet_s: float = 0.2, timeout_s: float = 3.0) -> None:
        """Wait (at most `timeout_s`) until no worker has used CPU, started or exited for `quiet_s`, so that the tail
        of an earlier job (a worker finishing its task, or exiting) is not counted in the next window."""
        deadline = time.monotonic() + timeout_s
        before = {pid: cpu for pid, (cpu, _) in self._workers().items()}
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            now = {pid: cpu for pid, (cpu, _) in self._workers().items()}
            if now == before:
                return
            before = now

    def sample(self) -> None:
        workers = self._workers()
        for pid, (cpu, _) in workers.items():
            # a worker first seen after the first sample was forked in the window: it started from zero
            self._cpu_first.setdefault(pid, cpu if not self._samples else 0)
            self._cpu_last[pid] = cpu
        self._samples.append({pid: rss for pid, (_, rss) in workers.items()})

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> WorkerMemory:
        import threading

        self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        ran = {pid for pid, cpu in self._cpu_last.items() if cpu > self._cpu_first[pid]}
        one = max((rss for s in self._samples for pid, rss in s.items() if pid in ran), default=0.0)
        total = max((sum(rss for pid, rss in s.items() if pid in ran) for s in self._samples), default=0.0)
        self.peak = WorkerPeak(round(one, 1), round(total, 1), len(ran))


def spark_jvm_pid() -> int:
    """The pid of the JVM this driver started (pyspark keeps its Popen), else this process: the workers are below it."""
    from pyspark import SparkContext

    proc = getattr(SparkContext._gateway, "proc", None)
    return proc.pid if proc is not None else os.getpid()


def _measure(fn: Callable[[], None]) -> tuple[float, WorkerPeak]:
    memory = WorkerMemory()
    memory.wait_until_idle()  # not timed: the previous path's workers settle first
    with memory:
        started = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - started
    return elapsed, memory.peak


def _summary(rows: int, runs: list[float], peaks: list[WorkerPeak]) -> dict:
    median = statistics.median(runs)
    return {
        "median_s": round(median, 3),
        "min_s": round(min(runs), 3),
        "max_s": round(max(runs), 3),
        "rows_per_s": round(rows / median),
        "rows_per_s_min": round(rows / max(runs)),
        "rows_per_s_max": round(rows / min(runs)),
        "runs_s": [round(t, 3) for t in runs],
        "workers": {
            "peak_rss_mb_one": max(p.one_mb for p in peaks),
            "peak_rss_mb_total": max(p.total_mb for p in peaks),
            "workers": max(p.workers for p in peaks),
        },
    }


def _scaling(sizes: list[dict]) -> dict:
    """Per path measured at every size: rows/s and the workers' peaks at each size, and the line through the medians."""
    names = [n for n in sizes[0]["paths"] if all(n in s["paths"] for s in sizes)]
    scaling = {}
    for name in names:
        rows = [s["rows"] for s in sizes]
        entry = {
            "rows_per_s": {str(s["rows"]): s["paths"][name]["rows_per_s"] for s in sizes},
            "peak_rss_mb_one": {str(s["rows"]): s["paths"][name]["workers"]["peak_rss_mb_one"] for s in sizes},
            "peak_rss_mb_total": {str(s["rows"]): s["paths"][name]["workers"]["peak_rss_mb_total"] for s in sizes},
        }
        if len(set(rows)) >= 2:
            fixed_s, per_row_s = fit_line(rows, [s["paths"][name]["median_s"] for s in sizes])
            entry |= {
                "fixed_s": round(fixed_s, 3),
                "per_row_us": round(per_row_s * 1e6, 4),
                "marginal_rows_per_s": round(1 / per_row_s) if per_row_s > 0 else None,
            }
        scaling[name] = entry
    return scaling


def run_bench(
    *,
    rows: int | list[int],
    repeat: int,
    output: Path,
    workdir: Path,
    only: list[str] | None,
    models: list[str],
    triton: bool,
    console,
    warmup: bool = True,
) -> dict:
    """Measure the chosen paths at each size in `rows` (in turn; interleaved repetitions within a size), write the
    JSON report to `output`, print the tables, and return the report."""
    from rich.progress import Progress

    sizes = [rows] if isinstance(rows, int) else list(rows)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    refs = _register_models(workdir, models)
    spark = _session()
    measured = []
    with _sidecar(workdir, refs, triton) as urls:
        runs: dict[tuple[int, str], Callable[[], None]] = {}
        for size in sizes:
            bench = _prepare(spark, size, workdir, refs)
            runs |= {(size, name): fn for name, fn in _paths(bench, set(only) if only else None, urls).items()}
        times: dict[tuple[int, str], list[float]] = {run: [] for run in runs}
        peaks: dict[tuple[int, str], list[WorkerPeak]] = {run: [] for run in runs}
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("benchmark", total=len(runs) * (repeat + warmup))
            warmups = runs.items() if warmup else ()
            for (size, name), fn in warmups:  # JIT, worker start-up, model load; not counted
                progress.update(task, description=f"warm-up {name} ({size:,} rows)")
                _measure(fn)
                progress.advance(task)
            # interleaved over paths and sizes, so that drift in the machine's speed hits every path and size alike
            for i in range(repeat):
                for (size, name), fn in runs.items():
                    progress.update(task, description=f"{name} ({size:,} rows, {i + 1}/{repeat})")
                    elapsed, peak = _measure(fn)
                    times[size, name].append(elapsed)
                    peaks[size, name].append(peak)
                    progress.advance(task)
    for size in sizes:
        results = {name: _summary(size, times[s, name], peaks[s, name]) for s, name in runs if s == size}
        measured.append({"rows": size, "paths": results, "ratios": _ratios(results)})
    report = {
        "sizes": measured,
        "scaling": _scaling(measured),
        "features": N_FEATURES,
        "batch_rows": BATCH_ROWS,
        "repeat": repeat,
        "warmup": warmup,
        "models": {k: r.uri for k, r in refs.items()},
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg": _loadavg(),
        "versions": {
            p: version(p) for p in ("pyspark", "delta-spark", "mlflow", "onnxruntime", "pyarrow", "tritonclient")
        },
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    output.write_text(json.dumps(report, indent=2))
    _print(console, report)
    return report


def _loadavg() -> str | None:
    """The machine's load at the end of the run (1, 5, 15 minutes), so that a reader can judge the figures."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


REFERENCES = ("jvm-copy", "parquet-copy", "floor")
"""Paths every other path is compared with; per model also its ``embedded``, ``spark_udf`` and ``onnxruntime``."""


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
        key = name.rpartition("/")[0]
        bases = {base: rate(base) for base in REFERENCES}
        if key:
            bases |= {base: rate(f"{key}/{base}") for base in ("embedded", "spark_udf", "onnxruntime")}
        for base, value in bases.items():
            if value and not name.endswith(base):
                ratios[f"{name} / {base}"] = round(results[name]["rows_per_s"] / value, 3)
    return ratios


def _print(console, report: dict) -> None:
    from rich.table import Table

    if not console.is_terminal:  # a file or a pipe: do not squeeze the tables into 80 columns
        from rich.console import Console

        console = Console(file=console.file, width=200)
    bases = ("jvm-copy", "parquet-copy", "floor", "embedded", "spark_udf")
    for size in report["sizes"]:
        results, rows = size["paths"], size["rows"]
        table = Table(
            title=f"{rows:,} rows x {N_FEATURES} features, {report['repeat']} runs each, medians and min-max "
            f"({report['cores']} cores, load {report['loadavg']})"
        )
        for col in ("path", "median s", "min-max s", "rows/s", *(f"vs {b}" for b in bases), "worker RSS MB"):
            table.add_column(col, justify="left" if col == "path" else "right")
        for name, r in results.items():
            key = name.rpartition("/")[0]

            def vs(base: str, r=r, key=key, results=results) -> str:
                base = base if base in REFERENCES else f"{key}/{base}"
                return f"{r['rows_per_s'] / results[base]['rows_per_s']:.2f}x" if base in results else "-"

            w = r["workers"]
            table.add_row(
                name,
                f"{r['median_s']:.2f}",
                f"{r['min_s']:.2f}-{r['max_s']:.2f}",
                f"{r['rows_per_s']:,}",
                *(vs(b) for b in bases),
                f"{w['peak_rss_mb_one']:.0f} / {w['peak_rss_mb_total']:.0f} ({w['workers']})" if w["workers"] else "-",
            )
        console.print(table)
    if len(report["sizes"]) < 2:
        return
    sizes = [s["rows"] for s in report["sizes"]]
    table = Table(
        title="cost growth: rows/s at each size, the line through the medians (fixed s + us per row), "
        "workers' peak RSS MB at each size (one worker / all)"
    )
    table.add_column("path", justify="left")
    for col in (*(f"rows/s {n:,}" for n in sizes), "fixed s", "us/row", *(f"RSS {n:,}" for n in sizes)):
        table.add_column(col, justify="right")
    for name, entry in report["scaling"].items():
        table.add_row(
            name,
            *(f"{entry['rows_per_s'][str(n)]:,}" for n in sizes),
            f"{entry.get('fixed_s', float('nan')):.2f}",
            f"{entry.get('per_row_us', float('nan')):.3f}",
            *(f"{entry['peak_rss_mb_one'][str(n)]:.0f} / {entry['peak_rss_mb_total'][str(n)]:.0f}" for n in sizes),
        )
    console.print(table)
