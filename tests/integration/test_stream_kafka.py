"""Streaming from and to Kafka end to end: a real Kafka broker (Apache Kafka's own, one KRaft node on loopback), real
Spark Structured Streaming through Spark's Kafka connector, real Delta tables read back with delta-rs, a real MLflow
registry. What the broker holds is read back with an independent client (confluent-kafka, `consume_all`), never
with the code under test."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pytest

from scoring import build_job_config, columns
from scoring.engine import quality
from scoring.errors import ScoringError
from scoring.launchers import kafka_broker as kb
from scoring.modes import stream
from tests.integration.conftest import FEATURES, delta_version, read_delta

pytest_plugins = ["tests.integration.kafka_fixtures"]  # kafka_broker, kafka_topic_factory, fresh_kafka_broker

DAY = "2026-11-01"
T0 = (int(time.time()) - 3600) * 1000
"""The record timestamps' base (epoch ms, an hour ago): each row's event_time must be exactly its record's timestamp.
Recent on purpose: the broker deletes records older than its retention (7 days) a few seconds after it starts."""
WAIT_S = 180.0
"""Generous: how long a test waits for rows to land (a loaded 2-core machine, a broker coming back)."""


# -- helpers ------------------------------------------------------------------------------------------------------


def _job(lake, tmp_path: Path, bootstrap: str, topic: str, name: str = "kstream", **stream_section):
    tree = lake.job(str(tmp_path / f"{name}_out"))
    tree["stream"] = {
        "source": "kafka",
        "checkpoint": str(tmp_path / f"{name}_ck"),
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "fields": {"customer_id": "long"}},
        **stream_section,
    }
    return build_job_config(tree)


def _rows(n: int, start: int = 0) -> list[dict]:
    """`n` good records' values, customer ids ``start`` .. ``start + n - 1`` (distinct across calls)."""
    rng = np.random.default_rng(start + 7)
    values = rng.normal(size=(n, len(FEATURES))).round(6)
    return [
        {"customer_id": start + i, "ds": DAY, **{f: float(v) for f, v in zip(FEATURES, row, strict=True)}}
        for i, row in enumerate(values)
    ]


def _produce(bootstrap: str, topic: str, rows: list[dict]) -> None:
    records = [(str(r["customer_id"]), json.dumps(r), T0 + r["customer_id"]) for r in rows]
    assert kb.produce(bootstrap, topic, records) == len(rows)


def _model_predict(model_uri: str, features: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(mlflow.onnx.load_model(model_uri).SerializeToString())
    return session.run(["probabilities"], {"X": features.astype(np.float32)})[0]


def _features(rows: list[dict]) -> np.ndarray:
    return np.array([[r[f] for f in FEATURES] for r in rows], dtype=np.float64)


def _probabilities(table: pa.Table) -> np.ndarray:
    return np.stack(table.column("probabilities").to_numpy(zero_copy_only=False))


def _epoch_ms(column: pa.ChunkedArray) -> list[int]:
    """A Delta timestamp column (microseconds) as epoch milliseconds."""
    return [us // 1000 for us in column.cast(pa.int64()).to_pylist()]


def _assert_scored_like_the_model(out: pa.Table, rows: list[dict]) -> None:
    """`out` holds each of `rows` exactly once, with the model's own predictions for it."""
    ids = out.column("customer_id").to_pylist()
    duplicates = [k for k, n in Counter(ids).items() if n > 1]
    assert not duplicates, f"scored more than once: {duplicates[:10]}"
    assert sorted(ids) == sorted(r["customer_id"] for r in rows)
    by_id = {r["customer_id"]: r for r in rows}
    out = out.sort_by("customer_id")
    expected = [by_id[k] for k in out.column("customer_id").to_pylist()]
    model_uri = out.column(columns.MODEL_URI)[0].as_py()
    np.testing.assert_allclose(_probabilities(out), _model_predict(model_uri, _features(expected)), rtol=1e-6)
    assert set(out.column("ds").to_pylist()) == {DAY}


def _by_origin(table: pa.Table) -> dict[tuple[str, int, int], dict]:
    """Output rows by their record's (topic, partition, offset); a duplicate origin fails."""
    found: dict[tuple[str, int, int], dict] = {}
    for row in table.to_pylist():
        origin = (row[columns.SOURCE_TOPIC], row[columns.SOURCE_PARTITION], row[columns.SOURCE_OFFSET])
        assert origin not in found, f"record {origin} is in the output twice"
        found[origin] = row
    return found


# -- Kafka -> Delta -----------------------------------------------------------------------------------------------


def test_a_kafka_stream_scores_every_record_once_with_its_topic_partition_offset_and_timestamp(
    spark, lake, tmp_path, kafka_broker, kafka_topic_factory
):
    topic = kafka_topic_factory(partitions=2)
    rows = _rows(600)
    _produce(kafka_broker.bootstrap, topic, rows)
    config = _job(lake, tmp_path, kafka_broker.bootstrap, topic, max_offsets_per_trigger=300)

    record = stream.run(config, spark=spark, available_now=True)

    out = read_delta(config.output.table)
    assert out.num_rows == 600
    _assert_scored_like_the_model(out, rows)
    # the source columns say where each row came from: what the broker itself holds there
    held = kb.consume_all(kafka_broker.bootstrap, topic, expect=600)
    assert len(held) == 600
    assert {r.partition for r in held} == {0, 1}
    origins = _by_origin(out)
    assert set(origins) == {(topic, r.partition, r.offset) for r in held}
    for r in held:
        row = origins[(topic, r.partition, r.offset)]
        assert row["customer_id"] == json.loads(r.value)["customer_id"] == int(r.key)
    assert _epoch_ms(out.sort_by("customer_id").column(columns.EVENT_TIME)) == [T0 + i for i in range(600)]
    assert record.rows_in == record.rows_written == 600
    assert record.rows_quarantined == 0
    assert record.batches == 2 and record.stopped == "drained"
    assert record.source == f"kafka:{topic}"
    assert delta_version(config.quarantine_table) is None


# -- poison records -----------------------------------------------------------------------------------------------

_GOOD = _rows(1, start=9_000)[0]
_POISON: list[tuple[str, str | None, str]] = [
    # (what, the record's value, what the quarantine reason must say)
    ("bad JSON", '{"customer_id": 9101, "ds": "2026-11-01", "f00": 0.5, ', "not a JSON object"),
    ("not an object", "[1, 2, 3]", "not a JSON object"),
    ("a missing feature", json.dumps({k: v for k, v in {**_GOOD, "customer_id": 9102}.items() if k != "f03"}), "f03"),
    ("a string feature", json.dumps({**_GOOD, "customer_id": 9103, "f02": "abc"}), "wrong type: f02"),
    ("a NaN string feature", json.dumps({**_GOOD, "customer_id": 9104, "f00": "NaN"}), "wrong type: f00"),
    ("a string key", json.dumps({**_GOOD, "customer_id": "x9105"}), "wrong type: customer_id"),
    ("an empty value", "", "empty record"),
    ("no value (a tombstone)", None, "empty record"),
]


def test_poison_records_go_to_quarantine_once_each_with_their_raw_value_and_origin_and_the_rest_is_scored(
    spark, lake, tmp_path, kafka_broker, kafka_topic_factory
):
    topic = kafka_topic_factory()
    good = _rows(200)
    records: list[tuple[str | None, str | None, int]] = []
    bad_at: list[int] = []  # positions (= offsets: one partition) of the poison records
    poison = iter(_POISON)
    for i, row in enumerate(good):
        records.append((str(row["customer_id"]), json.dumps(row), T0 + i))
        if i % 25 == 10 and (item := next(poison, None)) is not None:
            bad_at.append(len(records))
            records.append((f"poison-{len(bad_at)}", item[1], T0 + 10_000 + i))
    assert len(bad_at) == len(_POISON)
    assert kb.produce(kafka_broker.bootstrap, topic, records) == len(records)
    config = _job(lake, tmp_path, kafka_broker.bootstrap, topic)

    record = stream.run(config, spark=spark, available_now=True)  # does not crash

    out = read_delta(config.output.table)
    assert out.num_rows == len(good)
    _assert_scored_like_the_model(out, good)
    assert set(out.column(columns.SOURCE_OFFSET).to_pylist()).isdisjoint(bad_at)

    held = {r.offset: r for r in kb.consume_all(kafka_broker.bootstrap, topic, expect=len(records))}
    quarantined = read_delta(config.quarantine_table)
    assert quarantined.num_rows == len(_POISON)
    seen: dict[int, dict] = {}
    for q in quarantined.to_pylist():
        original = json.loads(q[quality.QUARANTINE_ROW])
        offset = original[columns.SOURCE_OFFSET]
        assert offset not in seen, f"record at offset {offset} quarantined twice"
        seen[offset] = {**q, "original": original}
    assert sorted(seen) == bad_at
    for offset, (what, value, says) in zip(bad_at, _POISON, strict=True):
        q, original = seen[offset], seen[offset]["original"]
        assert original[columns.SOURCE_TOPIC] == topic, what
        assert original[columns.SOURCE_PARTITION] == 0, what
        assert original.get("raw_value") == value, what  # exactly what arrived (null: no value at all)
        broker_value = held[offset].value
        assert (broker_value.decode() if broker_value is not None else None) == value, what
        assert says in q[quality.QUARANTINE_REASON], f"{what}: {q[quality.QUARANTINE_REASON]!r}"
        assert q[quality.QUARANTINE_STAGE] == "source", what
        assert q[columns.SCORING_RUN_ID].startswith(f"{record.query_id}:"), what
    assert record.rows_in == len(records)
    assert record.rows_written == len(good)
    assert record.rows_quarantined == len(_POISON)
    assert record.stopped == "drained"


# -- Kafka sink ---------------------------------------------------------------------------------------------------


def test_the_kafka_sink_puts_every_scored_row_on_the_output_topic_keyed_by_the_input_key_as_in_delta(
    spark, lake, tmp_path, kafka_broker, kafka_topic_factory
):
    source, target = kafka_topic_factory(partitions=2, suffix="in"), kafka_topic_factory(partitions=2, suffix="out")
    rows = _rows(300, start=50_000)
    _produce(kafka_broker.bootstrap, source, rows)
    config = _job(
        lake,
        tmp_path,
        kafka_broker.bootstrap,
        source,
        sinks=["delta", "kafka"],
        kafka_sink={"topic": target},
    )

    record = stream.run(config, spark=spark, available_now=True)

    out = read_delta(config.output.table)
    _assert_scored_like_the_model(out, rows)
    sent = kb.consume_all(kafka_broker.bootstrap, target, timeout_s=60)  # everything there, to its end
    assert len(sent) == out.num_rows == 300  # no failure, so no replay: each row once
    values = [json.loads(r.value) for r in sent]
    assert [r.key.decode() for r in sent] == [str(v["customer_id"]) for v in values]
    assert Counter(v["customer_id"] for v in values) == Counter(out.column("customer_id").to_pylist())
    delta_rows = {r["customer_id"]: r for r in out.to_pylist()}
    for v in values:
        d = delta_rows[v["customer_id"]]
        assert set(v) == set(d), "the record carries every output column"
        for name in (
            "ds",
            *columns.LINEAGE[:-1],
            columns.SOURCE_TOPIC,
            columns.SOURCE_PARTITION,
            columns.SOURCE_OFFSET,
        ):
            assert v[name] == d[name], name
        for name in (columns.SCORED_AT, columns.EVENT_TIME):
            assert dt.datetime.fromisoformat(v[name]) == d[name], name
        np.testing.assert_allclose(v["probabilities"], d["probabilities"], rtol=1e-6)
    assert record.rows_written == 300


# -- the broker goes away mid-stream -------------------------------------------------------------------------------


class _Supervisor:
    """Keeps the query running the way a supervisor would: a query that failed is restarted from its checkpoint."""

    def __init__(self, config, spark) -> None:
        self.config, self.spark = config, spark
        self.failures: list[BaseException] = []
        self.records: list[stream.StreamRecord] = []
        self.handle = stream.start(config, spark=spark)

    def wait_for_rows(self, n: int, timeout_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            table = self.config.output.table
            landed = read_delta(table).num_rows if delta_version(table) is not None else 0
            if landed >= n:
                return
            if not self.handle.query.isActive:
                self._restart()
            assert time.monotonic() < deadline, f"{landed} of {n} rows after {timeout_s:g} s ({self.failures})"
            time.sleep(0.5)

    def _restart(self) -> None:
        try:
            self.records.append(self.handle.close())
        except Exception as e:  # the query failed: what a supervisor logs before it restarts it
            self.failures.append(e)
        self.handle = stream.start(self.config, spark=self.spark)

    def close(self) -> None:
        self.records.append(self.handle.close())


def test_a_kafka_stream_scores_every_record_exactly_once_across_broker_restarts_and_a_broker_crash(
    spark, lake, tmp_path, fresh_kafka_broker
):
    broker = fresh_kafka_broker
    topic = "scores-in"
    kb.create_topic(broker.bootstrap, topic, partitions=2)
    config = _job(lake, tmp_path, broker.bootstrap, topic, name="restart", interval_s=0.5)
    produced: list[dict] = []

    def produce(n: int) -> None:
        rows = _rows(n, start=len(produced))
        _produce(broker.bootstrap, topic, rows)
        produced.extend(rows)

    supervisor = _Supervisor(config, spark)
    try:
        produce(200)
        supervisor.wait_for_rows(200)
        broker.stop()  # a controlled shutdown while the query polls for more
        time.sleep(3)
        broker.start(timeout_s=120)
        produce(200)
        supervisor.wait_for_rows(400)
        broker.kill()  # a crash: no controlled shutdown
        time.sleep(3)
        broker.start(timeout_s=120)
        produce(200)
        supervisor.wait_for_rows(600)
    finally:
        supervisor.close()

    out = read_delta(config.output.table)
    held = kb.consume_all(broker.bootstrap, topic, expect=600)
    assert len(held) == 600  # the independent count of what the broker holds
    assert out.num_rows == 600
    _assert_scored_like_the_model(out, produced)
    assert set(_by_origin(out)) == {(topic, r.partition, r.offset) for r in held}
    scored = sum(r.rows_written for r in supervisor.records)
    assert scored <= 600, "a batch was written twice"


# -- what is wrong at start ----------------------------------------------------------------------------------------


def test_an_unreachable_broker_fails_at_start_within_seconds_naming_the_bootstrap_servers_key(spark, lake, tmp_path):
    (port,) = kb.free_ports(1)  # nothing listens there
    config = _job(lake, tmp_path, f"127.0.0.1:{port}", "anything")
    started = time.monotonic()
    with pytest.raises(ScoringError, match=r"stream\.kafka\.bootstrap_servers") as caught:
        stream.run(config, spark=spark, available_now=True)
    assert time.monotonic() - started < 45, "not Spark's minutes of retries"
    assert f"127.0.0.1:{port}" in caught.value.message
    assert not Path(config.output.table).exists()
    assert not Path(config.stream.checkpoint).exists()


def test_a_missing_topic_fails_at_start_naming_the_topic_key_and_creates_nothing(
    spark, lake, tmp_path, kafka_broker, kafka_topic_factory
):
    missing = kafka_topic_factory(create=False)
    config = _job(lake, tmp_path, kafka_broker.bootstrap, missing)
    started = time.monotonic()
    with pytest.raises(ScoringError, match=r"stream\.kafka\.topic") as caught:
        stream.run(config, spark=spark, available_now=True)
    assert time.monotonic() - started < 45
    assert missing in caught.value.message
    assert not Path(config.output.table).exists()
    assert missing not in kb.topic_names(kafka_broker.bootstrap), "the check must not create the topic"

    # the same for the output topic of a Kafka sink
    source, missing_out = kafka_topic_factory(), kafka_topic_factory(create=False)
    config = _job(
        lake, tmp_path, kafka_broker.bootstrap, source, name="sink", sinks=["kafka"], kafka_sink={"topic": missing_out}
    )
    with pytest.raises(ScoringError, match=r"stream\.kafka_sink\.topic") as caught:
        stream.run(config, spark=spark, available_now=True)
    assert missing_out in caught.value.message
    assert missing_out not in kb.topic_names(kafka_broker.bootstrap)
