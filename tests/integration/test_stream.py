"""Streaming mode end to end: real Spark Structured Streaming, real Delta tables read back with delta-rs, a real
MLflow registry (and, in test_stream_kafka.py, a real Kafka broker)."""

from __future__ import annotations

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from scoring import build_job_config, columns
from scoring.errors import ConfigError, InputError, QualityError
from scoring.modes import stream
from scoring.tools import demo
from tests.integration.conftest import FEATURES, delta_version, features_of, make_table, read_delta


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
    # created by the first micro-batch as a batch run creates its output: file statistics on the key only
    from deltalake import DeltaTable

    from scoring.adapters.delta import STATS_COLUMNS

    assert DeltaTable(config.output.table).metadata().configuration[STATS_COLUMNS] == "customer_id"
    # every row says which micro-batch and source versions it came from
    run_ids = set(out.column(columns.SCORING_RUN_ID).to_pylist())
    assert all(r.startswith(f"{record.query_id}:") for r in run_ids)
    assert pc.all(pc.less_equal(out.column(columns.SOURCE_VERSION_FROM), out.column(columns.INPUT_VERSION))).as_py()
    assert pc.max(out.column(columns.INPUT_VERSION)).as_py() == delta_version(config.input.table)
    assert record.lag_p50_s is not None and record.lag_p50_s >= 0


def _chunk(rows: int, seed: int, first_key: int) -> pa.Table:
    table = make_table(rows, seed=seed)
    keys = pa.array(np.arange(first_key, first_key + rows, dtype=np.int64))
    return table.set_column(table.schema.get_field_index("customer_id"), "customer_id", keys)


def _append_file(path, table: pa.Table) -> None:
    """One append = one source version = one file (unpartitioned): one micro-batch with max_files_per_trigger 1."""
    demo.write_delta(path, table, mode="append", partition_by=())


def _wait(condition, timeout_s: float = 120.0, what: str = "the stream") -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_failing_gate_stops_the_query_committing_nothing_of_that_batch_and_quarantine_lets_it_pass(
    spark, lake, tmp_path
):
    gate = {
        "expectations": [{"type": "between", "column": "f00", "min": -10.0, "max": 10.0}],
        "policy": "fail",
        "max_bad_fraction": 0.05,
    }
    config = _job(lake, tmp_path, stream={"max_files_per_trigger": 1}, quality={"input": gate})
    clean, dirty = _chunk(200, 21, 0), _chunk(200, 22, 1000)
    f00 = dirty.column("f00").to_numpy().copy()
    f00[[5, 77]] = 50.0  # two rows outside the gate's range
    dirty = dirty.set_column(dirty.schema.get_field_index("f00"), "f00", pa.array(f00))
    _append_file(config.input.table, clean)
    _append_file(config.input.table, dirty)

    for _attempt in range(2):  # a restart meets the same micro-batch again
        with pytest.raises(QualityError, match=r"micro-batch 1 .*nothing of this micro-batch was committed.*restart"):
            stream.run(config, spark=spark, available_now=True)
        out = read_delta(config.output.table)
        assert sorted(out.column("customer_id").to_pylist()) == list(range(200))  # batch 0 only
        assert delta_version(config.quarantine_table) is None

    # the policy changes: the same checkpoint resumes with the same batch, and sets the two rows aside
    gate["policy"] = "quarantine"
    config = _job(lake, tmp_path, stream={"max_files_per_trigger": 1}, quality={"input": gate})
    record = stream.run(config, spark=spark, available_now=True)
    out = read_delta(config.output.table)
    bad = {1005, 1077}
    expected = set(range(200)) | (set(range(1000, 1200)) - bad)
    assert sorted(out.column("customer_id").to_pylist()) == sorted(expected)
    quarantine = read_delta(config.quarantine_table)
    assert sorted(quarantine.column("customer_id").to_pylist()) == sorted(bad)
    assert record.rows_quarantined == 2 and record.batches == 1


def test_invalid_features_are_set_aside_once_with_skip(spark, lake, tmp_path):
    config = _job(lake, tmp_path, input={"on_invalid_rows": "skip"}, stream={"max_files_per_trigger": 1})
    table = _chunk(300, 23, 0)
    f03 = table.column("f03").to_numpy().copy()
    f03[[1, 2, 250]] = np.inf
    _append_file(config.input.table, table.set_column(table.schema.get_field_index("f03"), "f03", pa.array(f03)))
    stream.run(config, spark=spark, available_now=True)
    assert read_delta(config.output.table).num_rows == 297
    quarantine = read_delta(config.quarantine_table)
    assert sorted(quarantine.column("customer_id").to_pylist()) == [1, 2, 250]
    assert set(quarantine.column("quarantine_stage").to_pylist()) == {"input"}


def test_a_new_checkpoint_on_an_output_another_query_fills_is_refused(spark, lake, tmp_path):
    config = _job(lake, tmp_path)
    _append_file(config.input.table, _chunk(100, 24, 0))
    first = stream.run(config, spark=spark, available_now=True)
    version = delta_version(config.output.table)
    moved = config.model_copy(
        update={"stream": config.stream.model_copy(update={"checkpoint": str(tmp_path / "another_ck")})}
    )
    with pytest.raises(ConfigError, match=rf"already holds micro-batches of stream query {first.query_id}"):
        stream.run(moved, spark=spark, available_now=True)
    assert delta_version(config.output.table) == version
    # the same checkpoint resumes: nothing new, nothing written twice
    again = stream.run(config, spark=spark, available_now=True)
    assert again.query_id == first.query_id and again.rows_in == 0
    assert delta_version(config.output.table) == version


def _spellings(path: str, tmp_path) -> list[str]:
    """Other ways to write the folder `path`: relative, trailing slash, file: URIs, a `..` detour, a symlink."""
    import os

    link = tmp_path / "source_link"
    link.symlink_to(path)
    parent, name = os.path.split(path)
    return [
        os.path.relpath(path),
        path + "/",
        f"file:{path}",
        f"file://{path}/",
        f"{parent}/{name}/../{name}",
        str(link),
    ]


def test_a_new_checkpoint_on_the_same_source_however_it_is_spelled_is_refused(spark, lake, tmp_path):
    config = _job(lake, tmp_path)
    _append(config.input.table, _chunk(50, 26, 0))
    first = stream.run(config, spark=spark, available_now=True)
    version = delta_version(config.output.table)
    for i, spelling in enumerate(_spellings(config.input.table, tmp_path)):
        moved = config.model_copy(
            update={
                "input": config.input.model_copy(update={"table": spelling}),
                "stream": config.stream.model_copy(update={"checkpoint": str(tmp_path / f"ck_{i}")}),
            }
        )
        with pytest.raises(ConfigError, match=rf"already holds micro-batches of stream query {first.query_id}"):
            stream.run(moved, spark=spark, available_now=True)
    assert delta_version(config.output.table) == version
    assert read_delta(config.output.table).num_rows == 50


def test_a_missing_source_or_column_is_a_clear_error_at_start(spark, lake, tmp_path):
    config = _job(lake, tmp_path)
    with pytest.raises(InputError, match="input.table: .* is not a Delta table"):
        stream.run(config, spark=spark, available_now=True)
    _append_file(config.input.table, _chunk(10, 25, 0).drop(["f02"]))
    with pytest.raises(InputError, match=r"input.features: column\(s\) \['f02'\] not in the input table"):
        stream.run(config, spark=spark, available_now=True)
    assert delta_version(config.output.table) is None


def _register_two_versions(lake, name: str) -> tuple[str, str]:
    first = demo.register(
        demo.train_classifier(lake.table, FEATURES, sample=300),
        lake.table,
        FEATURES,
        name=name,
        alias="live",
        flavor="onnx",
    )
    second = demo.register(demo.train_classifier(lake.table, FEATURES), lake.table, FEATURES, name=name, flavor="onnx")
    return first, second


@pytest.mark.parametrize("follow", [False, True], ids=["pinned", "follow_alias"])
def test_an_alias_moved_mid_stream_is_pinned_by_default_and_followed_when_asked(spark, lake, tmp_path, follow):
    from mlflow import MlflowClient

    name = f"stream_clf_{'follow' if follow else 'pinned'}"
    first, second = _register_two_versions(lake, name)
    config = _job(
        lake,
        tmp_path,
        model={"uri": f"models:/{name}@live"},
        stream={"max_files_per_trigger": 1, "follow_alias": follow, "alias_check_interval_s": 0, "interval_s": 0.2},
    )
    _append_file(config.input.table, _chunk(150, 26, 0))
    handle = stream.start(config, spark=spark)
    try:
        _wait(lambda: handle.scorer.batches >= 1, what="the first micro-batch")
        MlflowClient().set_registered_model_alias(name, "live", second)
        _append_file(config.input.table, _chunk(150, 27, 1000))
        _wait(lambda: handle.scorer.batches >= 2, what="the second micro-batch")
    finally:
        record = handle.close()
    out = read_delta(config.output.table).sort_by("customer_id")
    assert out.num_rows == 300
    versions = out.column(columns.MODEL_VERSION).to_pylist()
    keys = out.column("customer_id").to_pylist()
    expected = {k: (second if follow and k >= 1000 else first) for k in keys}
    assert versions == [expected[k] for k in keys]
    assert record.model_versions == ((first, second) if follow else (first,))
    # each row's prediction is its stamped version's own predict
    src = read_delta(config.input.table).sort_by("customer_id")
    for version in set(versions):
        mask = pc.equal(out.column(columns.MODEL_VERSION), version)
        got = np.stack(out.filter(mask).column("probabilities").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(got, _model_predict(f"models:/{name}/{version}", src.filter(mask)), rtol=1e-6)


def test_lag_and_counts_are_exported_as_prometheus_metrics(spark, lake, tmp_path):
    import urllib.request

    config = _job(lake, tmp_path, stream={"metrics_port": 0, "interval_s": 0.2})
    _append_file(config.input.table, _chunk(120, 28, 0))
    handle = stream.start(config, spark=spark)
    try:
        _wait(lambda: handle.scorer.rows_in >= 120, what="120 rows")
        url = f"http://127.0.0.1:{handle.metrics.port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        record = handle.close()
    job = config.name
    assert f'scoring_stream_rows_in_total{{job="{job}"}} 120.0' in text
    assert f'scoring_stream_rows_out_total{{job="{job}"}} 120.0' in text
    assert f'scoring_stream_lag_seconds_count{{job="{job}"}} 120.0' in text
    assert 'scoring_stream_batches_total{job="' in text
    assert record.metrics_url == url and record.lag_p99_s is not None
