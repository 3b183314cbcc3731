"""The delta-rs adapter on real Delta tables written with delta-rs (no Spark)."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pyarrow as pa
import pytest
from deltalake import CommitProperties, Transaction, write_deltalake

from scoring.adapters import deltalog
from scoring.errors import ConfigError

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]


def _table(days=DAYS, per_day=(1, 2, 3)) -> pa.Table:
    ds = [day for day, n in zip(days, per_day, strict=True) for _ in range(n)]
    return pa.table({"id": pa.array(range(len(ds)), pa.int64()), "ds": pa.array(ds)})


def test_no_table_is_none_and_an_empty_history():
    assert deltalog.snapshot("/nonexistent/table") is None
    assert deltalog.version("/nonexistent/table") is None
    assert deltalog.history("/nonexistent/table") == []
    assert deltalog.read("/nonexistent/table", ["id"]) is None
    assert deltalog.count_where("/nonexistent/table", "id", 1) == 0


def test_partition_rows_come_from_the_log_for_string_and_date_partitions(tmp_path):
    write_deltalake(tmp_path / "s", _table(), partition_by=["ds"])
    snap = deltalog.snapshot(str(tmp_path / "s"))
    assert snap.version == 0 and snap.columns == ("id", "ds") and snap.partition_columns == ("ds",)
    assert deltalog.partition_rows(snap, "ds") == {"2026-11-01": 1, "2026-11-02": 2, "2026-11-03": 3}
    assert deltalog.partition_rows(snap, "ds", ["2026-11-02", "2026-11-09"]) == {"2026-11-02": 2}

    dated = _table().set_column(1, "ds", pa.array([dt.date.fromisoformat(d) for d in _table()["ds"].to_pylist()]))
    write_deltalake(tmp_path / "d", dated, partition_by=["ds"])
    snap = deltalog.snapshot(str(tmp_path / "d"))
    assert deltalog.partition_rows(snap, "ds", ["2026-11-03"]) == {"2026-11-03": 3}
    assert deltalog.has_rows(snap, "ds", "2026-11-01") and not deltalog.has_rows(snap, "ds", "2026-11-04")


def test_a_plain_column_is_counted_by_reading_it(tmp_path):
    write_deltalake(tmp_path / "flat", _table())
    snap = deltalog.snapshot(str(tmp_path / "flat"))
    assert snap.partition_columns == ()
    assert deltalog.value_rows(snap, "ds", ["2026-11-01", "2026-11-03"]) == {"2026-11-01": 1, "2026-11-03": 3}
    assert deltalog.has_rows(snap, "ds", "2026-11-02") and not deltalog.has_rows(snap, "ds", "2026-11-04")
    with pytest.raises(ValueError, match="not a partition column"):
        deltalog.partition_rows(snap, "ds")


def test_history_is_newest_first_with_user_metadata_and_recorded_transactions(tmp_path):
    path = str(tmp_path / "t")
    write_deltalake(path, _table(), partition_by=["ds"])
    meta = {"scoring_run_id": "run-1", "rows_read": 6}
    write_deltalake(
        path,
        _table(),
        mode="append",
        commit_properties=CommitProperties(
            custom_metadata={"userMetadata": json.dumps(meta)}, app_transactions=[Transaction("scoring:run-1", 0)]
        ),
    )
    commits = deltalog.history(path)
    assert [c.version for c in commits] == [1, 0]
    assert commits[0].metadata == meta and commits[0].user_metadata == json.dumps(meta)
    assert commits[0].operation == "WRITE" and commits[0].metrics["num_added_rows"] == 6
    assert commits[1].metadata is None and commits[0].timestamp.tzinfo is dt.UTC
    assert [c.version for c in deltalog.history(path, 1)] == [1]
    assert deltalog.transaction_version(path, "scoring:run-1") == 0
    assert deltalog.transaction_version(path, "scoring:run-2") is None


def test_append_creates_then_appends_and_reads_come_back_filtered(tmp_path):
    path = str(tmp_path / "runs")
    deltalog.append(path, _table(DAYS[:1], (1,)))
    deltalog.append(path, _table(DAYS[1:2], (2,)))
    assert deltalog.version(path) == 1
    assert deltalog.read(path, ["ds"], column="ds", values=["2026-11-02"]).num_rows == 2
    assert deltalog.count_where(path, "ds", "2026-11-01") == 1
    assert deltalog.head(path, 2).num_rows == 2


def test_a_path_with_a_literal_percent_escape_is_refused_with_the_reason(tmp_path):
    write_deltalake(tmp_path / "t", _table(), partition_by=["ds"])
    folder = tmp_path / "my%20lake"
    folder.mkdir()
    shutil.copytree(tmp_path / "t", folder / "t")  # a table Spark could have written there
    with pytest.raises(ConfigError, match=r"input.table: .*my%20lake/t contains '%20', which delta-rs decodes") as e:
        deltalog.snapshot(str(folder / "t"), key="input.table")
    assert "my lake" in e.value.message and "rename the folder" in e.value.hint
    with pytest.raises(ConfigError, match="%20"):
        deltalog.append(str(folder / "runs"), _table())
    spaced = tmp_path / "my lake"
    shutil.copytree(tmp_path / "t", spaced / "t")  # a real space is fine
    assert deltalog.version(str(spaced / "t")) == 0


def test_files_without_statistics_in_the_log_are_counted_from_their_footers(tmp_path):
    path = tmp_path / "nostats"
    write_deltalake(path, _table(), partition_by=["ds"])
    commit = path / "_delta_log" / "00000000000000000000.json"
    actions = [json.loads(line) for line in commit.read_text().splitlines()]
    for action in actions:  # as an old writer leaves them: add actions without stats
        action.get("add", {}).pop("stats", None)
    commit.write_text("\n".join(json.dumps(a) for a in actions) + "\n")
    snap = deltalog.snapshot(str(path))
    assert deltalog.partition_rows(snap, "ds") == {"2026-11-01": 1, "2026-11-02": 2, "2026-11-03": 3}


def test_a_process_that_read_a_table_exits_cleanly(tmp_path):
    """Reading through delta-rs's own filesystem aborted the interpreter at exit in most processes (exit 134,
    "terminate called without an active exception"): the adapter reads local files through pyarrow's. Several fresh
    processes, since the abort was a race (about 4 in 5 here before the fix)."""
    import subprocess
    import sys

    write_deltalake(tmp_path / "plain", _table(), partition_by=["ds"])
    write_deltalake(tmp_path / "plain", _table(), partition_by=["ds"], mode="append")
    script = (
        "import sys\n"
        "from scoring.adapters import deltalog\n"
        "rows = deltalog.read(sys.argv[1], ['id', 'ds'])\n"
        "print(rows.num_rows, deltalog.count_where(sys.argv[1], 'ds', '2026-11-03'))\n"
    )
    for _ in range(6):
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "plain")], capture_output=True, text=True, timeout=120
        )
        assert (done.returncode, done.stdout.split()) == (0, ["12", "6"]), done.stderr[-2000:]
