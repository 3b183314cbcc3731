"""`scoring bench`'s measured paths (the engine, its alternatives and the floors, listed in :mod:`scoring.tools.bench`),
each a function that scores the bench's input once, and the local Triton sidecar the ``triton-*`` paths use. The
functions Spark's Python workers run are defined here at module level, so that workers import them by name."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import functools
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from scoring import columns
from scoring.tools import demo
from scoring.tools.bench_data import BATCH_ROWS, N_FEATURES, SWEEP, TENSOR, Bench, _write


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
