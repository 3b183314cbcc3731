"""`scoring bench`'s input and models: the generated Delta snapshot (and its Parquet copy), the registered ONNX models
(``tiny``, ``heavy``, the tensor MLP), the Spark session and the one Delta writer every path uses; see
:mod:`scoring.tools.bench`, which re-exports these names."""

from __future__ import annotations

import dataclasses
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
