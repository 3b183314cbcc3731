"""The batch job end to end: real Spark, real Delta tables, a real MLflow registry."""

from __future__ import annotations

import json
import os

import mlflow
import numpy as np
import pyarrow.compute as pc
from mlflow import MlflowClient

from scoring import build_job_config, columns, run
from scoring.tools import demo
from tests.integration.conftest import FEATURES, delta_version, features_of, read_delta


def _run(spark, lake, output, **sections):
    return run(build_job_config(lake.job(output, **sections)), spark=spark)


def _sorted(table, key="customer_id"):
    return table.sort_by(key)


def test_onnx_predictions_equal_the_models_own_predict(spark, lake):
    summary = _run(spark, lake, "onnx_out")
    out = _sorted(read_delta(lake.root / "onnx_out"))
    src = _sorted(lake.table)
    assert out.column("customer_id").to_pylist() == src.column("customer_id").to_pylist()
    # the registered ONNX model's own predict: onnxruntime on the model MLflow hands back
    import onnxruntime

    session = onnxruntime.InferenceSession(mlflow.onnx.load_model(summary.model_uri).SerializeToString())
    label, proba = session.run(["label", "probabilities"], {"X": features_of(src).astype(np.float32)})
    np.testing.assert_array_equal(out.column("label").to_numpy(), label)
    probabilities = np.stack(out.column("probabilities").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probabilities, proba, rtol=1e-6)
    # ... and to the scikit-learn model it was converted from, to float32 tolerance
    np.testing.assert_allclose(probabilities, lake.onnx_source_model.predict_proba(features_of(src)), atol=1e-5)
    assert summary.prediction_columns == ("label", "probabilities")


def test_sklearn_predictions_equal_the_models_own_predict(spark, lake):
    summary = _run(spark, lake, "skl_out", model={"uri": "models:/skl_clf@champion"})
    out = _sorted(read_delta(lake.root / "skl_out"))
    src = _sorted(lake.table)
    own = mlflow.sklearn.load_model(summary.model_uri).predict(src.select(FEATURES).to_pandas())
    np.testing.assert_array_equal(out.column(columns.PREDICTION).to_numpy(), own)
    np.testing.assert_array_equal(own, lake.sklearn_model.predict(features_of(src)))
    assert summary.prediction_columns == (columns.PREDICTION,)


def test_every_row_and_the_commit_carry_the_same_lineage(spark, lake):
    summary = _run(spark, lake, "lineage_out")
    out = read_delta(lake.root / "lineage_out")
    for name in columns.LINEAGE:
        assert out.column(name).null_count == 0, name
    assert set(out.column(columns.MODEL_NAME).to_pylist()) == {"onnx_clf"}
    assert set(out.column(columns.MODEL_VERSION).to_pylist()) == {summary.model_version}
    assert set(out.column(columns.MODEL_URI).to_pylist()) == {f"models:/onnx_clf/{summary.model_version}"}
    assert set(out.column(columns.INPUT_VERSION).to_pylist()) == {summary.input_version}
    assert set(out.column(columns.SCORING_RUN_ID).to_pylist()) == {summary.run_id}
    assert len(set(out.column(columns.SCORED_AT).to_pylist())) == 1
    assert out.schema.names[:2] == ["customer_id", "ds"]

    from deltalake import DeltaTable

    commit = DeltaTable(str(lake.root / "lineage_out")).history(1)[0]
    meta = json.loads(commit["userMetadata"])
    assert meta[columns.SCORING_RUN_ID] == summary.run_id
    assert meta[columns.MODEL_URI] == summary.model_uri
    assert meta[columns.INPUT_VERSION] == summary.input_version
    assert meta["requested_model_uri"] == "models:/onnx_clf@champion"
    assert meta["rows_read"] == summary.rows_read == lake.table.num_rows
    # the tables' canonical identities (one spelling per place), beside the names as given
    assert meta["input_uri"] == "file://" + os.path.realpath(lake.input_table) == summary.input_uri
    assert meta["output_uri"] == "file://" + os.path.realpath(lake.root / "lineage_out") == summary.output_uri
    assert summary.rows_written == lake.table.num_rows and summary.rows_rejected == 0


def test_rerun_replaces_only_the_partitions_it_scored(spark, lake):
    first = _run(spark, lake, "rerun_out")
    n = lake.table.num_rows
    assert read_delta(lake.root / "rerun_out").num_rows == n
    again = _run(spark, lake, "rerun_out")
    out = read_delta(lake.root / "rerun_out")
    assert out.num_rows == n
    assert set(out.column(columns.SCORING_RUN_ID).to_pylist()) == {again.run_id}

    one_day = _run(spark, lake, "rerun_out", input={"where": "ds = '2026-11-02'"})
    out = read_delta(lake.root / "rerun_out")
    assert out.num_rows == n
    by_day = {
        ds: set(out.filter(pc.equal(out.column("ds"), ds)).column(columns.SCORING_RUN_ID).to_pylist())
        for ds in ("2026-11-01", "2026-11-02", "2026-11-03")
    }
    assert by_day == {"2026-11-01": {again.run_id}, "2026-11-02": {one_day.run_id}, "2026-11-03": {again.run_id}}
    assert one_day.rows_read == one_day.rows_written == n // 3
    assert first.output_version_before is None and again.output_version == first.output_version + 1


def test_moving_the_alias_stamps_the_new_version(spark, lake):
    before = _run(spark, lake, "alias_out")
    clf = demo.train_classifier(lake.table, FEATURES, max_iter=20)
    new = demo.register(clf, lake.table, FEATURES, name="onnx_clf", flavor="onnx")
    client = MlflowClient()
    client.set_registered_model_alias("onnx_clf", "champion", new)
    try:
        after = _run(spark, lake, "alias_out")
    finally:
        client.set_registered_model_alias("onnx_clf", "champion", before.model_version)
    assert after.model_version == new != before.model_version
    out = read_delta(lake.root / "alias_out")
    assert set(out.column(columns.MODEL_VERSION).to_pylist()) == {new}
    assert set(out.column(columns.MODEL_URI).to_pylist()) == {f"models:/onnx_clf/{new}"}
    assert out.num_rows == lake.table.num_rows


def test_a_retry_with_the_same_run_id_does_not_commit_twice(spark, lake):
    first = _run(spark, lake, "retry_out", run_id="nightly-2026-11-24-try1")
    version = delta_version(lake.root / "retry_out")
    retry = _run(spark, lake, "retry_out", run_id="nightly-2026-11-24-try1")
    assert first.committed and not retry.committed
    # the retry reports the committed attempt's figures and commit, and writes nothing again
    assert retry.rows_written == first.rows_written and retry.output_version == first.output_version
    assert retry.completed_earlier_attempt
    assert delta_version(lake.root / "retry_out") == version
    assert read_delta(lake.root / "retry_out").num_rows == lake.table.num_rows
    # a new run id is a legitimate re-run, never mistaken for a retry
    rerun = _run(spark, lake, "retry_out", run_id="nightly-2026-11-24-try2")
    assert rerun.committed and delta_version(lake.root / "retry_out") == version + 1


def test_a_pinned_input_version_is_scored_and_recorded(spark, lake, tmp_path):
    path = tmp_path / "versioned"
    demo.write_delta(path, lake.table.slice(0, 300))
    demo.write_delta(path, lake.table.slice(0, 600))  # version 1: more rows
    pinned = run(build_job_config(lake.job("pinned_out", input={"table": str(path), "version": 0})), spark=spark)
    latest = run(build_job_config(lake.job("latest_out", input={"table": str(path)})), spark=spark)
    assert (pinned.input_version, pinned.rows_written) == (0, 300)
    assert (latest.input_version, latest.rows_written) == (1, 600)
    assert set(read_delta(lake.root / "pinned_out").column(columns.INPUT_VERSION).to_pylist()) == {0}


def test_skip_mode_scores_the_valid_rows_and_counts_the_rest(spark, lake, tmp_path):
    table = lake.table.slice(0, 900)
    f01 = table.column("f01").to_numpy().copy()
    f01[[3, 10, 500]] = np.nan
    table = table.set_column(table.schema.get_field_index("f01"), "f01", [f01])
    path = tmp_path / "dirty"
    demo.write_delta(path, table)
    summary = run(
        build_job_config(lake.job("skip_out", input={"table": str(path), "on_invalid_rows": "skip"})), spark=spark
    )
    assert (summary.rows_read, summary.rows_written, summary.rows_rejected) == (900, 897, 3)
    written = set(read_delta(lake.root / "skip_out").column("customer_id").to_pylist())
    assert written.isdisjoint({3, 10, 500}) and len(written) == 897
