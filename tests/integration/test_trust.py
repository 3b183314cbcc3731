"""Trust every row: a run replaces exactly what it selected, checks everything before its commit, sets aside what it
does not score exactly once, and turns every refusal into a clear error that leaves the tables as they were.

Output tables are read back with delta-rs, never with the code under test."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from scoring import build_job_config, columns, run
from scoring.engine.quality import QUARANTINE_REASON, QUARANTINE_STAGE
from scoring.errors import ConfigError, InputError, InvalidRowsError, OutputError, OutputValidationError
from scoring.tools import demo
from tests.integration.conftest import FEATURES, delta_version, read_delta

KEY = "customer_id"
_names = itertools.count()


def _run(spark, lake, name, **sections):
    return run(build_job_config(lake.job(name, **sections)), spark=spark)


def _rows(path) -> dict:
    """(key, ds) -> the whole row, read with delta-rs."""
    return {(r[KEY], r.get("ds")): r for r in read_delta(path).to_pylist()}


def _selected(spark, table: str, where: str) -> set:
    """What a filter selects, computed by Spark SQL on the input (not by the code under test)."""
    rows = spark.read.format("delta").load(table).where(where).select(KEY, "ds").collect()
    return {(r[KEY], r["ds"]) for r in rows}


def _history(path) -> list[dict]:
    return DeltaTable(str(path)).history()


@pytest.fixture()
def scored(spark, lake):
    """A fresh output with one full run in it: (name, rows before)."""
    name = f"scoped_{next(_names)}"
    _run(spark, lake, name, run_id=f"first-{name}")
    return name, _rows(lake.root / name)


def _assert_only_selected_changed(before: dict, after: dict, selected: set, run_id: str) -> None:
    for k, row in before.items():
        if k not in selected:
            assert after[k] == row, f"row {k} was not selected but changed"
    for k in selected:
        assert after[k][columns.SCORING_RUN_ID] == run_id


@pytest.mark.parametrize(
    "where",
    [
        "customer_id < 100",  # on the key
        "f00 > 0.5",  # on a feature
        "ds = '2026-11-02' AND customer_id % 7 = 0",  # part of one partition
        "ds = '2026-11-03'",  # a whole partition
    ],
)
def test_a_filtered_rerun_replaces_exactly_the_rows_it_selected_and_keeps_every_other(spark, lake, scored, where):
    name, before = scored
    selected = _selected(spark, lake.input_table, where)
    summary = _run(spark, lake, name, input={"where": where}, run_id=f"rerun-{name}")
    after = _rows(lake.root / name)
    assert len(after) == len(before) == lake.table.num_rows
    _assert_only_selected_changed(before, after, selected, summary.run_id)
    assert summary.rows_read == summary.rows_written == summary.rows_replaced == len(selected)
    assert summary.rows_kept == len(before) - len(selected)
    commit = json.loads(_history(lake.root / name)[0]["userMetadata"])
    assert commit[columns.SCORING_RUN_ID] == summary.run_id and commit["rows_written"] == len(selected)


def test_an_unpartitioned_output_keeps_the_rows_a_filtered_rerun_did_not_select(spark, lake):
    name = f"flat_{next(_names)}"
    _run(spark, lake, name, output={"partition_by": []})
    before = _rows(lake.root / name)
    selected = {(k, None) for k, _ in _selected(spark, lake.input_table, "customer_id < 50")}
    summary = _run(spark, lake, name, output={"partition_by": []}, input={"where": "customer_id < 50"})
    after = _rows(lake.root / name)
    assert len(after) == len(before)
    _assert_only_selected_changed(before, after, selected, summary.run_id)


def test_a_rerun_removes_the_old_score_of_a_row_it_now_sets_aside(spark, lake, tmp_path):
    """The output never shows an older score for a row this run rejected: the quarantine table says why instead."""
    table = lake.table.slice(0, 600)
    demo.write_delta(tmp_path / "input", table)
    out = tmp_path / "out"
    job = lake.job("unused", input={"table": str(tmp_path / "input")}, output={"table": str(out)})
    run(build_job_config(job), spark=spark)
    f02 = table.column("f02").to_numpy().copy()
    f02[[5, 7]] = np.inf
    demo.write_delta(tmp_path / "input", table.set_column(table.schema.get_field_index("f02"), "f02", pa.array(f02)))
    job["input"]["on_invalid_rows"] = "skip"
    summary = run(build_job_config(job), spark=spark)
    ids = set(read_delta(out).column(KEY).to_pylist())
    bad = {table.column(KEY)[5].as_py(), table.column(KEY)[7].as_py()}
    assert not (ids & bad) and len(ids) == 598
    assert summary.rows_rejected == 2 and summary.rows_replaced == 600
    quarantined = read_delta(str(out) + "_quarantine")
    assert set(quarantined.column(KEY).to_pylist()) == bad
    assert set(quarantined.column(QUARANTINE_STAGE).to_pylist()) == {"input"}


def test_a_key_duplicated_within_a_partition_is_refused_naming_it(spark, lake, tmp_path, scored):
    name, before = scored
    table = lake.table.slice(0, 100)
    keys = table.column(KEY).to_numpy().copy()
    days = table.column("ds").to_pylist()
    twin = next(i for i in range(12, 100) if days[i] == days[11])
    keys[twin] = keys[11]
    demo.write_delta(tmp_path / "dupes", table.set_column(table.schema.get_field_index(KEY), KEY, pa.array(keys)))
    with pytest.raises(InputError, match=rf"key customer_id={keys[11]}.*more than once"):
        _run(spark, lake, name, input={"table": str(tmp_path / "dupes")})
    assert _rows(lake.root / name) == before


@pytest.mark.parametrize(
    "target, words",
    [
        ("input", ["output.table", "same table as input.table"]),
        ("parquet", ["output.table", "no Delta table"]),
        ("file", ["output.table", "is a file"]),
    ],
)
def test_an_output_that_is_the_input_or_not_a_delta_table_is_refused_before_anything_is_written(
    spark, lake, tmp_path, target, words
):
    input_version = delta_version(lake.input_table)
    if target == "input":
        path = lake.input_table
    elif target == "parquet":
        path = str(tmp_path / "plain")
        spark.range(3).write.parquet(path)
    else:
        path = str(tmp_path / "a_file")
        (tmp_path / "a_file").write_text("not a table")
    error = ConfigError if target == "input" else OutputError
    with pytest.raises(error) as caught:
        run(build_job_config(lake.job("unused", output={"table": path})), spark=spark)
    for word in words:
        assert word in str(caught.value)
    assert "how to fix" in str(caught.value)
    assert delta_version(lake.input_table) == input_version


def test_an_output_or_quarantine_that_is_the_input_spelled_another_way_is_refused(spark, lake, tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(os.path.dirname(lake.input_table))
    name = os.path.basename(lake.input_table)
    spellings = [
        os.path.relpath(lake.input_table),
        lake.input_table + "/",
        f"file://{lake.input_table}",
        f"file:{os.path.dirname(lake.input_table)}/./{name}/",
        f"link/{name}",
    ]
    input_version = delta_version(lake.input_table)
    for spelling in spellings:
        for section in ({"output": {"table": spelling}}, {"quality": {"quarantine_table": spelling}}):
            job = lake.job(str(lake.root / "spelled_out"))
            for key, value in section.items():
                job[key] = {**job.get(key, {}), **value}
            with pytest.raises(ConfigError, match="is the same table as input.table"):
                run(build_job_config(job), spark=spark)
    assert delta_version(lake.input_table) == input_version
    assert delta_version(str(lake.root / "spelled_out")) is None


def test_a_quarantine_table_equal_to_the_input_or_the_output_is_refused(spark, lake):
    for table in (lake.input_table, str(lake.root / "q_same")):
        job = lake.job("q_same", quality={"quarantine_table": table})
        with pytest.raises(ConfigError, match="quality.quarantine_table"):
            run(build_job_config(job), spark=spark)
    assert delta_version(lake.root / "q_same") is None


def test_an_append_only_output_is_refused_at_plan_time(spark, lake, scored):
    name, before = scored
    version = delta_version(lake.root / name)
    spark.sql(f"ALTER TABLE delta.`{lake.root / name}` SET TBLPROPERTIES ('delta.appendOnly' = 'true')")
    with pytest.raises(OutputError, match="append-only"):
        _run(spark, lake, name, input={"where": "customer_id < 10"})
    assert delta_version(lake.root / name) == version + 1  # only the ALTER TABLE
    assert _rows(lake.root / name) == before


def test_a_vacuumed_input_version_is_a_clear_input_error(spark, lake, tmp_path):
    path = tmp_path / "vacuumed"
    demo.write_delta(path, lake.table.slice(0, 100))
    demo.write_delta(path, lake.table.slice(100, 100))  # version 1 replaces version 0's files
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        spark.sql(f"VACUUM delta.`{path}` RETAIN 0 HOURS")
    finally:
        spark.conf.unset("spark.databricks.delta.retentionDurationCheck.enabled")
    with pytest.raises(InputError, match="vacuum|VACUUM") as caught:
        run(build_job_config(lake.job("unused_v", input={"table": str(path), "version": 0})), spark=spark)
    assert "how to fix" in str(caught.value)
    assert delta_version(lake.root / "unused_v") is None


def test_an_infinite_feature_fails_the_run_naming_the_row_by_default(spark, lake, tmp_path):
    table = lake.table.slice(0, 300)
    f01 = table.column("f01").to_numpy().copy()
    f01[123] = -np.inf
    demo.write_delta(tmp_path / "inf", table.set_column(table.schema.get_field_index("f01"), "f01", pa.array(f01)))
    key = table.column(KEY)[123].as_py()
    with pytest.raises(InvalidRowsError, match=rf"customer_id={key}.*f01"):
        run(build_job_config(lake.job("unused_inf", input={"table": str(tmp_path / "inf")})), spark=spark)
    assert delta_version(lake.root / "unused_inf") is None


def _nan_model(name: str) -> str:
    """A real pyfunc model that predicts NaN for rows whose f00 is above 1.5 (pickled by value)."""
    import mlflow
    from mlflow.models import infer_signature

    class NanAbove(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            x = model_input["f00"].to_numpy(dtype="float64")
            return np.where(x > 1.5, np.nan, x * 2.0)

    sample = demo.make_features(10, n_features=len(FEATURES)).select(FEATURES).to_pandas()
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=NanAbove(),
            registered_model_name=name,
            signature=infer_signature(sample, np.zeros(10)),
        )
    return str(info.registered_model_version)


def test_nan_predictions_fail_the_run_by_default_and_are_quarantined_on_request(spark, lake, tmp_path):
    version = _nan_model("nan_above")
    uri = f"models:/nan_above/{version}"
    with pytest.raises(OutputValidationError, match="NaN or infinite predictions"):
        _run(spark, lake, "nan_out", model={"uri": uri})
    assert delta_version(lake.root / "nan_out") is None
    summary = _run(
        spark,
        lake,
        "nan_out",
        model={"uri": uri},
        output={"on_invalid_predictions": "quarantine"},
        quality={"quarantine_table": str(tmp_path / "nan_q")},
    )
    bad = {
        k
        for k, f in zip(lake.table.column(KEY).to_pylist(), lake.table.column("f00").to_pylist(), strict=True)
        if f > 1.5
    }
    assert bad, "the test input must hold rows the model scores as NaN"
    out = read_delta(lake.root / "nan_out")
    assert not np.isnan(out.column("prediction").to_numpy()).any()
    assert set(out.column(KEY).to_pylist()).isdisjoint(bad)
    quarantined = read_delta(tmp_path / "nan_q")
    assert set(quarantined.column(KEY).to_pylist()) == bad
    assert set(quarantined.column(QUARANTINE_REASON).to_pylist()) == {"NaN or infinite prediction"}
    assert summary.rows_quarantined == len(bad)
    assert summary.rows_read == summary.rows_written + summary.rows_quarantined


def test_auto_compaction_does_not_make_a_committed_run_report_failure(spark, lake):
    """Delta's auto-compaction commits right after a write; the run's figures come from its own commit."""
    name = f"compacted_{next(_names)}"
    spark.conf.set("spark.databricks.delta.autoCompact.enabled", "true")
    spark.conf.set("spark.databricks.delta.autoCompact.minNumFiles", "2")
    try:
        _run(spark, lake, name)
        summary = _run(spark, lake, name, input={"where": "customer_id < 500"})
    finally:
        spark.conf.unset("spark.databricks.delta.autoCompact.enabled")
        spark.conf.unset("spark.databricks.delta.autoCompact.minNumFiles")
    history = _history(lake.root / name)
    ours = [
        h for h in history if json.loads(h.get("userMetadata") or "{}").get(columns.SCORING_RUN_ID) == summary.run_id
    ]
    assert summary.committed and len(ours) == 1
    assert summary.output_version == ours[0]["version"]
    assert summary.rows_written == 500 and read_delta(lake.root / name).num_rows == lake.table.num_rows


def test_a_gate_that_sets_aside_every_row_removes_their_old_scores_and_quarantines_them(spark, lake, tmp_path):
    table = lake.table.slice(0, 200)
    demo.write_delta(tmp_path / "input", table)
    out, quarantine = tmp_path / "out", tmp_path / "q"
    job = lake.job("unused", input={"table": str(tmp_path / "input")}, output={"table": str(out)})
    job["quality"] = {"quarantine_table": str(quarantine)}
    run(build_job_config(job), spark=spark)
    job["quality"]["input"] = {
        "expectations": [{"type": "between", "column": "f00", "min": 100, "max": 200}],
        "policy": "quarantine",
        "max_bad_fraction": 1.0,
    }
    summary = run(build_job_config(job), spark=spark)
    assert summary.committed and summary.rows_written == 0 and summary.rows_quarantined == 200
    assert read_delta(out).num_rows == 0 and summary.rows_replaced == 200
    assert read_delta(quarantine).num_rows == 200
    with pytest.raises(InputError, match="every selected row was set aside"):
        run(build_job_config({**job, "output": {"table": str(tmp_path / "new"), "partition_by": ["ds"]}}), spark=spark)
    assert delta_version(tmp_path / "new") is None
