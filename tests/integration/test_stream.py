"""Streaming mode end to end: real Spark Structured Streaming, real Delta tables read back with delta-rs, a real
MLflow registry (and, in test_stream_kafka.py, a real Kafka broker)."""

from __future__ import annotations

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoring import build_job_config, columns, demo
from scoring.modes import stream
from tests.integration.conftest import delta_version, features_of, make_table, read_delta


def _job(lake, tmp_path, name="stream", **sections):
    tree = lake.job(str(tmp_path / f"{name}_out"), **sections)
    tree["input"] = {**tree["input"], "table": str(tmp_path / f"{name}_src")}
    tree["stream"] = {"checkpoint": str(tmp_path / f"{name}_ck"), **sections.get("stream", {})}
    return build_job_config(tree)


def _append(path, table: pa.Table) -> None:
    demo.write_delta(path, table, mode="append")


def _model_predict(model_uri: str, table: pa.Table) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(mlflow.onnx.load_model(model_uri).SerializeToString())
    return session.run(["probabilities"], {"X": features_of(table).astype(np.float32)})[0]


def test_a_delta_stream_scores_every_appended_row_once_equal_to_the_models_predict(spark, lake, tmp_path):
    config = _job(lake, tmp_path, stream={"max_files_per_trigger": 1})
    chunks = [make_table(300, seed=s) for s in (11, 12, 13)]
    offset = 0
    for chunk in chunks:  # distinct keys per chunk
        chunk = chunk.set_column(0, "customer_id", pc.add(chunk.column("customer_id"), offset))
        offset += 10_000
        _append(config.input.table, chunk)
    record = stream.run(config, spark=spark, available_now=True)
    out = read_delta(config.output.table).sort_by("customer_id")
    src = read_delta(config.input.table).sort_by("customer_id")
    assert out.num_rows == src.num_rows == 900
    assert out.column("customer_id").to_pylist() == src.column("customer_id").to_pylist()
    assert len(set(out.column("customer_id").to_pylist())) == 900
    probabilities = np.stack(out.column("probabilities").to_numpy(zero_copy_only=False))
    model_uri = out.column(columns.MODEL_URI)[0].as_py()
    np.testing.assert_allclose(probabilities, _model_predict(model_uri, src), rtol=1e-6)
    assert record.rows_in == record.rows_written == 900
    assert record.batches >= 3 and record.stopped == "drained"
    # every row says which micro-batch and source versions it came from
    run_ids = set(out.column(columns.SCORING_RUN_ID).to_pylist())
    assert all(r.startswith(f"{record.query_id}:") for r in run_ids)
    assert pc.all(pc.less_equal(out.column(columns.SOURCE_VERSION_FROM), out.column(columns.INPUT_VERSION))).as_py()
    assert pc.max(out.column(columns.INPUT_VERSION)).as_py() == delta_version(config.input.table)
    assert record.lag_p50_s is not None and record.lag_p50_s >= 0
