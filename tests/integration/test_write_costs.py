"""What a run's write costs and still guarantees: file statistics on the key only, lineage per row, counts from the log."""

from __future__ import annotations

import json

import pyarrow as pa
from deltalake import DeltaTable

from scoring import build_job_config, columns, run
from scoring.adapters import delta
from tests.integration.conftest import read_delta


def test_a_new_output_collects_file_statistics_on_its_key_only_and_keeps_lineage_per_row(spark, lake):
    summary = run(build_job_config(lake.job("stats_out")), spark=spark)
    path = str(lake.root / "stats_out")
    table = DeltaTable(path)
    assert table.metadata().configuration[delta.STATS_COLUMNS] == "customer_id"
    adds = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    assert sum(adds["num_records"]) == summary.rows_written == lake.table.num_rows
    stats_on = {name.split(".", 1)[1] for name in adds if name.startswith("min.")}
    assert stats_on == {"customer_id"}
    # the lineage columns are data of every row, read back by an independent reader
    out = read_delta(path)
    assert out.num_rows == lake.table.num_rows
    for name, value in summary.lineage.items():  # JSON-ready: scored_at as ISO 8601
        assert out.column(name).null_count == 0, name
        got = {v.isoformat() if name == columns.SCORED_AT else v for v in out.column(name).to_pylist()}
        assert got == {value}, name


def test_a_rerun_takes_its_counts_from_the_commit_and_the_log(spark, lake):
    """A whole-partition re-run's replaced and kept rows come from Delta's commit metrics and file statistics; they
    equal a real count of the table before the re-run."""
    job = lake.job("counted_out")
    run(build_job_config(job), spark=spark)
    before = read_delta(lake.root / "counted_out")
    job["input"]["where"] = "ds = '2026-11-02'"
    summary = run(build_job_config(job), spark=spark)
    in_partition = sum(1 for d in before.column("ds").to_pylist() if d == "2026-11-02")
    assert summary.rows_read == summary.rows_written == summary.rows_replaced == in_partition
    assert summary.rows_kept == before.num_rows - in_partition
    history = DeltaTable(str(lake.root / "counted_out")).history(1)[0]
    assert history["operationParameters"]["predicate"] == "`ds` IN ('2026-11-02')"  # the replaceWhere path
    assert json.loads(history["userMetadata"])["rows_written"] == in_partition


def test_statistics_properties_name_the_key_columns_that_are_not_partition_columns():
    assert delta.stats_properties(["customer_id"], ["ds"]) == {delta.STATS_COLUMNS: "customer_id"}
    assert delta.stats_properties(["id", "ds"], ["ds"]) == {delta.STATS_COLUMNS: "id"}
    assert delta.stats_properties(["a b"], []) == {delta.STATS_COLUMNS: "`a b`"}
    assert delta.stats_properties(["ds"], ["ds"]) == {"delta.dataSkippingNumIndexedCols": "0"}
