"""A stream under adversity that is not the user's data: a corrupt or hand-edited checkpoint file, a source deleted
and created again, VACUUM on the source or the output, a Kafka topic deleted mid-stream, the alias moving back and
forth under ``follow_alias``. Each ends either with the stream going on, or with a ScoringError (a non-zero exit from
the CLI) that names the cause and how to recover, never an unexpected error; and in each, no row is lost or
duplicated (tables read back with delta-rs).

Small tables, in-process queries on the session's Spark (a subprocess would add a JVM start per case)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from scoring import build_job_config, columns
from scoring.errors import InputError, ScoringError
from scoring.modes import stream
from scoring.tools import demo
from tests.integration.conftest import FEATURES, delta_version, features_of, make_table, read_delta

pytest_plugins = ["tests.integration.kafka_fixtures"]

ROWS = 40


def _tree(lake, tmp_path: Path, name: str, **stream_section) -> dict:
    tree = lake.job(str(tmp_path / f"{name}_out"))
    tree["output"] = {"table": str(tmp_path / f"{name}_out")}
    tree["input"] = {**tree["input"], "table": str(tmp_path / f"{name}_src")}
    tree["stream"] = {"checkpoint": str(tmp_path / f"{name}_ck"), "max_files_per_trigger": 1, **stream_section}
    return tree


def _chunk(seed: int, first_key: int, rows: int = ROWS) -> pa.Table:
    table = make_table(rows, seed=seed)
    keys = pa.array(np.arange(first_key, first_key + rows, dtype=np.int64))
    return table.set_column(table.schema.get_field_index("customer_id"), "customer_id", keys)


def _append(path: str, table: pa.Table) -> None:
    demo.write_delta(path, table, mode="append", partition_by=())


def _keys(path: str) -> list[int]:
    return sorted(read_delta(path).column("customer_id").to_pylist()) if delta_version(path) is not None else []


def _wait(condition, timeout_s: float = 90.0, what: str = "the stream") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _predict(model_uri: str, table: pa.Table) -> np.ndarray:
    import mlflow
    import onnxruntime

    session = onnxruntime.InferenceSession(mlflow.onnx.load_model(model_uri).SerializeToString())
    return session.run(["probabilities"], {"X": features_of(table).astype(np.float32)})[0]


def _not_generic(error: BaseException) -> None:
    assert isinstance(error, ScoringError), f"{type(error).__name__}: {error}"
    assert "unexpected error" not in str(error) and "report it" not in str(error)
    assert error.hint, "a recovery hint"


# -- the checkpoint -------------------------------------------------------------------------------------------------


def test_a_corrupt_or_hand_edited_checkpoint_file_is_named_with_how_to_recover_and_nothing_is_written(
    spark, lake, tmp_path
):
    """Spark's own failure (offsets), a file Spark parses with Jackson (commits, its checksum file removed as a hand
    edit would), the file we read first (metadata): each named, through the CLI's exit code and message."""
    from typer.testing import CliRunner

    from scoring.cli import app

    tree = _tree(lake, tmp_path, "ck")
    config = build_job_config(tree)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tree))
    _append(config.input.table, _chunk(1, 0))
    _append(config.input.table, _chunk(2, 1000))
    stream.run(config, spark=spark, available_now=True)
    _append(config.input.table, _chunk(3, 2000))
    before = _keys(config.output.table)
    assert before == list(range(ROWS)) + list(range(1000, 1000 + ROWS))
    checkpoint = Path(config.stream.checkpoint)
    for name, damage, drop_crc in [
        ("offsets/1", "garbage{", False),
        ("commits/1", "v1\n{not json", True),
        ("metadata", '{"id": ', False),
    ]:
        damaged = checkpoint / name
        crc = damaged.parent / f".{damaged.name}.crc"
        kept = damaged.read_bytes(), crc.read_bytes()
        damaged.write_text(damage)
        if drop_crc:  # edited by hand, its checksum removed: Hadoop reads it; Spark (or we) must see it is wrong
            crc.unlink()
        result = CliRunner().invoke(app, ["stream", str(path), "--available-now"])
        assert result.exit_code == 1, result.output
        message = " ".join(result.output.split())
        assert str(damaged) in message, message
        assert "backup" in message and "new output.table" in message, message
        assert "unexpected" not in message and "report it" not in message, message
        assert _keys(config.output.table) == before  # nothing written, nothing lost
        damaged.write_bytes(kept[0])
        crc.write_bytes(kept[1])
    stream.run(config, spark=spark, available_now=True)  # restored: it goes on, exactly once
    assert _keys(config.output.table) == before + list(range(2000, 2000 + ROWS))


# -- the source -----------------------------------------------------------------------------------------------------


def test_a_source_deleted_and_created_again_at_the_same_place_is_refused_naming_the_table(spark, lake, tmp_path):
    """While the query runs (Spark's Delta source would go on reading the new table under the old offsets, skipping
    its first versions' rows) and at a restart (Delta's own check of the table id): refused both times."""
    import os

    config = build_job_config(_tree(lake, tmp_path, "rec", interval_s=0.2))
    _append(config.input.table, _chunk(5, 0))
    handle = stream.start(config, spark=spark)
    try:
        _wait(lambda: handle.scorer.batches >= 1, what="micro-batch 0")
        new = str(tmp_path / "rec_new")  # a new table (a new Delta table id) moved to the same place
        for i in range(3):
            _append(new, _chunk(6 + i, (i + 1) * 1000))
        os.rename(config.input.table, str(tmp_path / "rec_old"))
        os.rename(new, config.input.table)
        with pytest.raises(InputError, match="deleted and created again") as running:
            handle.await_termination(90)
    finally:
        with pytest.raises(InputError):
            handle.close()
    with pytest.raises(InputError, match="deleted and created again") as restarted:
        stream.run(config, spark=spark, available_now=True)
    for caught in (running, restarted):
        _not_generic(caught.value)
        assert config.input.table in str(caught.value) and "new output.table" in caught.value.hint
    assert _keys(config.output.table) == list(range(ROWS))


def test_vacuum_of_source_files_the_stream_has_not_read_stops_it_naming_the_table_and_the_retention_settings(
    spark, lake, tmp_path
):
    from deltalake import DeltaTable

    config = build_job_config(_tree(lake, tmp_path, "vsrc"))
    _append(config.input.table, _chunk(8, 0))
    stream.run(config, spark=spark, available_now=True)
    _append(config.input.table, _chunk(9, 1000))
    _append(config.input.table, _chunk(10, 2000))
    # compaction removes the small files (the stream reads the appends, not the compacted copy), VACUUM deletes them
    source = DeltaTable(config.input.table)
    source.optimize.compact()
    source.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    with pytest.raises(InputError) as caught:
        stream.run(config, spark=spark, available_now=True)
    _not_generic(caught.value)
    message = str(caught.value)
    assert "input.table" in message and config.input.table in message and "VACUUM" in message
    assert "delta.deletedFileRetentionDuration" in caught.value.hint
    assert _keys(config.output.table) == list(range(ROWS))  # the micro-batch before: once; the failed one: nothing


def test_vacuum_of_the_output_and_a_batch_run_into_it_while_the_stream_runs_lose_and_duplicate_nothing(
    spark, lake, tmp_path
):
    """VACUUM of the output (after a compaction, so that it deletes files) is harmless: the stream only appends. A
    batch run into the stream's output at the same time is refused before it writes, naming the stream: it would
    replace rows by key under the stream's appends (rows replaced, deleted or doubled). The stream goes on."""
    from deltalake import DeltaTable

    from scoring.errors import OutputError
    from scoring.modes import batch

    config = build_job_config(_tree(lake, tmp_path, "vout", interval_s=0.2))
    _append(config.input.table, _chunk(11, 0))
    _append(config.input.table, _chunk(12, 1000))
    handle = stream.start(config, spark=spark)
    try:
        _wait(lambda: handle.scorer.batches >= 2, what="two micro-batches")
        out = DeltaTable(config.output.table)
        out.optimize.compact()  # tombstones the micro-batches' files ...
        out.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)  # ... and deletes them
        tree = lake.job(str(tmp_path / "vout_out"))
        tree["output"] = {"table": config.output.table}
        tree["input"] = {**tree["input"], "table": config.input.table}
        with pytest.raises(OutputError, match="is the output of a stream") as caught:
            batch.run(build_job_config(tree), spark=spark)
        _not_generic(caught.value)
        assert "another output.table" in caught.value.hint
        _append(config.input.table, _chunk(13, 2000))
        _wait(lambda: handle.scorer.batches >= 3, what="a micro-batch after the VACUUM and the batch run")
    finally:
        handle.close()
    assert _keys(config.output.table) == [k for base in (0, 1000, 2000) for k in range(base, base + ROWS)]


# -- Kafka ----------------------------------------------------------------------------------------------------------


def test_a_kafka_topic_deleted_mid_stream_stops_it_naming_the_topic_and_how_to_recover(
    spark, lake, tmp_path, kafka_broker, kafka_topic
):
    import json

    from confluent_kafka.admin import AdminClient

    from scoring.launchers import kafka_broker as kb

    def produce(first: int, n: int) -> None:
        rows = [{"customer_id": first + i, "ds": "2026-11-01", **{f: 0.01 * i for f in FEATURES}} for i in range(n)]
        assert (
            kb.produce(
                kafka_broker.bootstrap, kafka_topic, [(str(r["customer_id"]), json.dumps(r), None) for r in rows]
            )
            == n
        )

    tree = lake.job(str(tmp_path / "k_out"))
    tree["output"] = {"table": str(tmp_path / "k_out")}
    tree["stream"] = {
        "source": "kafka",
        "checkpoint": str(tmp_path / "k_ck"),
        "interval_s": 0.2,
        "kafka": {"bootstrap_servers": kafka_broker.bootstrap, "topic": kafka_topic, "fields": {"customer_id": "long"}},
    }
    config = build_job_config(tree)
    produce(0, 30)
    handle = stream.start(config, spark=spark)
    try:
        _wait(lambda: handle.scorer.rows_in >= 30, what="the first records")
        admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
        admin.delete_topics([kafka_topic])[kafka_topic].result(timeout=30)
        with pytest.raises(InputError) as caught:
            handle.await_termination(90)
    finally:
        with pytest.raises(InputError):
            handle.close()
    _not_generic(caught.value)
    assert repr(kafka_topic) in str(caught.value) and "failOnDataLoss" in caught.value.hint
    assert _keys(config.output.table) == list(range(30))


# -- the alias moving back and forth --------------------------------------------------------------------------------


def test_follow_alias_with_the_alias_moving_back_and_forth_stamps_each_row_with_the_version_that_scored_it_once(
    spark, lake, tmp_path
):
    from mlflow import MlflowClient

    name = "adversity_flip"
    first = demo.register(
        demo.train_classifier(lake.table, FEATURES, sample=300),
        lake.table,
        FEATURES,
        name=name,
        alias="live",
        flavor="onnx",
    )
    second = demo.register(demo.train_classifier(lake.table, FEATURES), lake.table, FEATURES, name=name, flavor="onnx")
    tree = _tree(lake, tmp_path, "flip", follow_alias=True, alias_check_interval_s=0, interval_s=0.1)
    tree["model"] = {"uri": f"models:/{name}@live"}
    config = build_job_config(tree)
    client = MlflowClient()
    flips = [first, second, first, second]
    expected: dict[int, str] = {}

    def append(i: int) -> None:
        _append(config.input.table, _chunk(20 + i, i * 1000, rows=20))
        expected.update({k: flips[i] for k in range(i * 1000, i * 1000 + 20)})

    append(0)
    handle = stream.start(config, spark=spark)
    try:
        _wait(lambda: handle.scorer.batches >= 1, what="micro-batch 0")
        for i in range(1, len(flips)):
            client.set_registered_model_alias(name, "live", flips[i])
            append(i)
            _wait(lambda n=i + 1: handle.scorer.batches >= n, what=f"micro-batch {i}")
    finally:
        record = handle.close()
    out = read_delta(config.output.table)
    keys = out.column("customer_id").to_pylist()
    assert sorted(keys) == sorted(expected)  # every row once
    stamped = dict(zip(keys, out.column(columns.MODEL_VERSION).to_pylist(), strict=True))
    assert stamped == expected
    assert record.model_versions == tuple(flips)
    # each row's prediction is its stamped version's own
    src = read_delta(config.input.table)
    for version in (first, second):
        mask = pc.equal(out.column(columns.MODEL_VERSION), version)
        rows = out.filter(mask)
        got = np.stack(rows.column("probabilities").to_numpy(zero_copy_only=False))
        wanted_keys = rows.column("customer_id")
        src_rows = src.filter(pc.is_in(src.column("customer_id"), wanted_keys))
        order = pc.sort_indices(src_rows.column("customer_id"))
        src_rows = src_rows.take(order)
        got = got[np.argsort(rows.column("customer_id").to_numpy())]
        np.testing.assert_allclose(got, _predict(f"models:/{name}/{version}", src_rows), rtol=1e-6)
