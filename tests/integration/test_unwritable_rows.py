"""Rows the output cannot take never reach the write (issue 17, section 2): a partition value whose directory name is
over 255 bytes after Spark's escaping (300 ASCII characters; 130 two-byte characters; 100 colons, each escaped to
three bytes), a key beyond the range of the existing output's int column. A stream sets each aside in the quarantine
table once, with why, commits the rest and keeps going; a batch run refuses them before its commit, naming the row,
or sets them aside when a quarantine table is configured. Every table is read back with delta-rs."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow as pa
import pytest

from scoring import build_job_config, columns
from scoring.core.writable import WriteRule, partition_segment
from scoring.engine import gates, quality
from scoring.errors import UnwritableRowsError
from scoring.launchers import kafka_broker as kb
from scoring.modes import batch, stream
from scoring.tools import demo
from tests.integration.conftest import DAYS, FEATURES, delta_version, make_table, read_delta
from tests.unit.test_writable import EDGE_CASES

pytest_plugins = ["tests.integration.kafka_fixtures"]  # kafka_broker, kafka_topic_factory

INT_MAX = 2**31 - 1
BAD = {  # key -> (ds, what the quarantine reason says)
    1_000_001: ("x" * 300, "partition value of ds cannot be a directory name: its path segment is 303 bytes"),
    1_000_002: ("é" * 130, "its path segment is 263 bytes"),
    1_000_003: (":" * 100, "its path segment is 303 bytes"),
    2**31: (DAYS[0], f"customer_id = {2**31} does not fit the output column's type int (the source gives bigint)"),
}
GOOD_EDGE = {INT_MAX: "x" * 252, 7: None}  # the longest name there is (255 bytes); the default partition


def _rows(keys, ds, seed: int, key_type=pa.int64()) -> pa.Table:
    table = make_table(len(keys), seed=seed)
    table = table.set_column(0, "customer_id", pa.array(keys, key_type))
    return table.set_column(table.schema.get_field_index("ds"), "ds", pa.array(ds, pa.string()))


def _good(first: int, n: int, seed: int) -> tuple[list[int], list[str | None]]:
    keys = list(range(first, first + n))
    return keys, [DAYS[k % len(DAYS)] for k in keys]


def _source_with_bad_rows(path, seed: int) -> list[int]:
    """Ten good rows, the two edge rows that must be written, one row of each unwritable kind; unpartitioned (the
    source itself could not hold those partition values)."""
    keys, ds = _good(100, 10, seed)
    keys += [*GOOD_EDGE, *BAD]
    ds += [*GOOD_EDGE.values(), *[d for d, _ in BAD.values()]]
    demo.write_delta(path, _rows(keys, ds, seed), partition_by=())
    return keys


def _keys(path) -> list[int]:
    return sorted(read_delta(path).column("customer_id").to_pylist())


def _int_key_output(spark, lake, tmp_path, name: str, *, as_stream: bool):
    """An output table whose customer_id column is int, made by a run over a 5-row int-keyed source."""
    src = tmp_path / f"{name}_int_src"
    keys, ds = _good(0, 5, 1)
    demo.write_delta(src, _rows(keys, ds, 1, pa.int32()), partition_by=())
    tree = lake.job(str(tmp_path / f"{name}_out"))
    tree["input"] = {**tree["input"], "table": str(src)}
    if as_stream:
        tree["stream"] = {"checkpoint": str(tmp_path / f"{name}_ck0")}
        stream.run(build_job_config(tree), spark=spark, available_now=True)
    else:
        batch.run(build_job_config(tree), spark=spark)
    assert read_delta(tree["output"]["table"]).schema.field("customer_id").type == pa.int32()
    return tree


def _assert_quarantined_once(path, expected: dict[int, tuple[str, str]]) -> None:
    quarantine = read_delta(path)
    keys = quarantine.column("customer_id").to_pylist()
    assert sorted(keys) == sorted(expected), "each unwritable row in quarantine exactly once"
    assert set(quarantine.column("quarantine_stage").to_pylist()) == {gates.WRITE_STAGE}
    for key, reason, ds in zip(
        keys, quarantine.column("quarantine_reason").to_pylist(), quarantine.column("ds").to_pylist(), strict=True
    ):
        assert expected[key][1] in reason, reason
        assert ds == expected[key][0]  # the value as it arrived, kept whole


def test_a_stream_sets_aside_each_row_the_output_cannot_take_once_and_keeps_going_after_a_restart(
    spark, lake, tmp_path
):
    tree = _int_key_output(spark, lake, tmp_path, "s", as_stream=True)
    src = tmp_path / "s_src"
    tree["input"] = {**tree["input"], "table": str(src)}
    tree["stream"] = {"checkpoint": str(tmp_path / "s_ck")}
    config = build_job_config(tree)
    first = _source_with_bad_rows(src, 2)

    record = stream.run(config, spark=spark, available_now=True)
    assert record.stopped == "drained" and record.error is None
    assert record.rows_in == len(first) and record.rows_quarantined == len(BAD)
    out = read_delta(config.output.table)
    scored = sorted(k for k in out.column("customer_id").to_pylist() if k >= 7)
    assert scored == sorted(k for k in first if k not in BAD)
    by_key = dict(zip(out.column("customer_id").to_pylist(), out.column("ds").to_pylist(), strict=True))
    assert by_key[INT_MAX] == "x" * 252 and by_key[7] is None
    assert os.path.isdir(os.path.join(config.output.table, "ds=" + "x" * 252))
    _assert_quarantined_once(config.quarantine_table, BAD)

    # a restart on the same checkpoint makes progress: new rows (one more unwritable) are scored or set aside
    more_keys, more_ds = _good(200, 3, 3)
    late = {1_000_005: ("y" * 256, "its path segment is 259 bytes")}
    demo.write_delta(src, _rows([*more_keys, *late], [*more_ds, late[1_000_005][0]], 3), partition_by=(), mode="append")
    again = stream.run(config, spark=spark, available_now=True)
    assert again.stopped == "drained" and again.rows_in == 4 and again.rows_quarantined == 1
    _assert_quarantined_once(config.quarantine_table, {**BAD, **late})
    written = [k for k in _keys(config.output.table) if k >= 7]
    set_aside = _keys(config.quarantine_table)
    assert not set(written) & set(set_aside) and len(written) == len(set(written))
    assert sorted(written + set_aside) == _keys(src), "every source row in exactly one of output and quarantine"


def test_a_batch_run_refuses_unwritable_rows_before_its_commit_or_sets_them_aside_in_a_configured_quarantine(
    spark, lake, tmp_path
):
    tree = _int_key_output(spark, lake, tmp_path, "b", as_stream=False)
    src = tmp_path / "b_src"
    tree["input"] = {**tree["input"], "table": str(src)}
    keys = _source_with_bad_rows(src, 4)
    output = tree["output"]["table"]
    before = delta_version(output), delta_version(output + "_quarantine")

    with pytest.raises(UnwritableRowsError) as refused:
        batch.run(build_job_config(tree), spark=spark)
    message = str(refused.value)
    assert f"{len(BAD)} selected row(s)" in message and "quality.quarantine_table" in message
    assert any(f"customer_id={k}: " in message and BAD[k][1] in message for k in BAD), message
    assert (delta_version(output), delta_version(output + "_quarantine")) == before  # nothing committed

    quarantine = str(tmp_path / "b_quarantine")
    tree["quality"] = {"quarantine_table": quarantine}
    record = batch.run(build_job_config(tree), spark=spark)
    assert record.committed and record.rows_rejected == len(BAD)
    assert record.rows_written == len(keys) - len(BAD)
    _assert_quarantined_once(quarantine, BAD)
    written = [k for k in _keys(output) if k >= 7]
    assert sorted(written + _keys(quarantine)) == sorted(keys), "every row in exactly one of output and quarantine"


def test_sparks_expression_and_the_rule_agree_on_every_edge_case_and_spark_writes_the_segments_the_rule_measures(
    spark, tmp_path
):
    from pyspark.sql import functions as F

    table = str(tmp_path / "edges")
    rule = WriteRule.for_table(table, ["ds"])
    values = [v for v, _ in EDGE_CASES]
    df = spark.createDataFrame([(i, v) for i, v in enumerate(values)], "id int, ds string")
    got = {r["id"]: r["why"] for r in df.select("id", gates.unwritable_reason(rule).alias("why")).collect()}
    assert got == {i: rule.path_problem({"ds": v}) for i, v in enumerate(values)}
    # on an object store: no segment limit, a 1,024-byte key (here 1024 - 8 - 1 - 80 = 935 bytes of segments)
    s3 = WriteRule.for_table("s3a://bucket/lake/out", ["ds"])
    long_values = [*values, "x" * 300, "x" * 931, "x" * 932, "é" * 465, "é" * 466, ":" * 310, ":" * 311]
    df = spark.createDataFrame(list(enumerate(long_values)), "id int, ds string")
    got = {r["id"]: r["why"] for r in df.select("id", gates.unwritable_reason(s3).alias("why")).collect()}
    expected = {i: s3.path_problem({"ds": v}) for i, v in enumerate(long_values)}
    assert got == expected
    assert [expected[len(values) + i] is None for i in range(7)] == [True, True, False, True, False, True, False]

    ok = [(i, v) for i, (v, problem) in enumerate(EDGE_CASES) if problem is None and v not in (None, "")]
    df.where(F.col("id").isin([i for i, _ in ok])).write.format("delta").partitionBy("ds").save(table)
    on_disk = {name for name in os.listdir(table) if name.startswith("ds=")}
    assert on_disk == {partition_segment("ds", v) for _, v in ok}


def test_the_issues_kafka_record_with_a_300_character_partition_value_is_set_aside_and_the_stream_goes_on(
    spark, lake, tmp_path, kafka_broker, kafka_topic_factory
):
    """The issue's repro: ten good records and one well-formed record whose ds is 300 characters long, in one
    micro-batch; then, after a restart on the same checkpoint, three more good ones and one whose ds escapes to 258
    bytes. Every record ends in exactly one of output and quarantine (by its offset)."""
    topic = kafka_topic_factory()
    at = (int(time.time()) - 600) * 1000
    rng = np.random.default_rng(5)

    def record(key: int, ds: str) -> tuple[str, str, int]:
        features = {f: float(v) for f, v in zip(FEATURES, rng.normal(size=len(FEATURES)).round(6), strict=True)}
        return str(key), json.dumps({"customer_id": key, "ds": ds, **features}), at + key

    first = [record(k, DAYS[0]) for k in range(10)] + [record(10, "x" * 300)]
    assert kb.produce(kafka_broker.bootstrap, topic, first, partition=0) == len(first)
    tree = lake.job(str(tmp_path / "k_out"))
    tree["stream"] = {
        "source": "kafka",
        "checkpoint": str(tmp_path / "k_ck"),
        "kafka": {"bootstrap_servers": kafka_broker.bootstrap, "topic": topic, "fields": {"customer_id": "long"}},
    }
    config = build_job_config(tree)
    done = stream.run(config, spark=spark, available_now=True)
    assert done.stopped == "drained" and done.rows_written == 10 and done.rows_quarantined == 1

    later = [record(k, DAYS[1]) for k in range(11, 14)] + [record(14, "%" * 85)]  # 85 x %25: 3 + 255 bytes
    assert kb.produce(kafka_broker.bootstrap, topic, later, partition=0) == len(later)
    again = stream.run(config, spark=spark, available_now=True)
    assert again.stopped == "drained" and again.rows_written == 3 and again.rows_quarantined == 1

    out = read_delta(config.output.table)
    written = sorted(out.column(columns.SOURCE_OFFSET).to_pylist())
    quarantine = read_delta(config.quarantine_table)
    rows = [json.loads(r) for r in quarantine.column(quality.QUARANTINE_ROW).to_pylist()]
    set_aside = sorted(r[columns.SOURCE_OFFSET] for r in rows)
    assert set_aside == [10, 14] and written == [*range(10), 11, 12, 13]
    assert sorted(written + set_aside) == list(range(15)), "every record in exactly one of output and quarantine"
    assert [r["raw_value"] for r in sorted(rows, key=lambda r: r[columns.SOURCE_OFFSET])] == [
        first[-1][1],
        later[-1][1],
    ]
    assert set(quarantine.column(quality.QUARANTINE_STAGE).to_pylist()) == {gates.WRITE_STAGE}
    assert sorted(quarantine.column(quality.QUARANTINE_REASON).to_pylist()) == [
        "partition value of ds cannot be a directory name: its path segment is 258 bytes after Spark's escaping, "
        "over the file system's 255",
        "partition value of ds cannot be a directory name: its path segment is 303 bytes after Spark's escaping, "
        "over the file system's 255",
    ]
