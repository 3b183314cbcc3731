"""Data-quality gates with Great Expectations on real Spark DataFrames; quarantine into a real Delta table."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest

from scoring import build_job_config, run
from scoring.engine.quality import QUARANTINE_REASON, QUARANTINE_ROW, QUARANTINE_STAGE, validate
from scoring.errors import QualityError
from scoring.tools import demo
from tests.integration.conftest import delta_version, read_delta


def _gate(expectations, policy="fail", max_bad_fraction=0.0):
    return {"expectations": expectations, "policy": policy, "max_bad_fraction": max_bad_fraction}


def _outside(lake, column, low, high):
    values = lake.table.column(column).to_numpy()
    return set(np.asarray(lake.table.column("customer_id"))[(values < low) | (values > high)].tolist())


@pytest.fixture(scope="module")
def guarded(spark, lake):
    run(build_job_config(lake.job("quality_guarded")), spark=spark)
    path = lake.root / "quality_guarded"
    return path, delta_version(path), read_delta(path).num_rows


def test_a_failed_input_expectation_fails_the_run_naming_it_and_writes_nothing(spark, lake, guarded):
    path, version, rows = guarded
    tree = lake.job(
        "quality_guarded", quality={"input": _gate([{"type": "between", "column": "f01", "min": -0.5, "max": 0.5}])}
    )
    with pytest.raises(QualityError) as caught:
        run(build_job_config(tree), spark=spark)
    message = str(caught.value)
    assert "input gate failed" in message and "between(column=f01, min=-0.5, max=0.5)" in message
    assert f"of {lake.table.num_rows} rows failed" in message and "how to fix" in message
    assert delta_version(path) == version and read_delta(path).num_rows == rows
    assert delta_version(str(path) + "_quarantine") is None


def test_quarantine_sets_aside_failing_rows_and_scores_the_rest(spark, lake, tmp_path):
    bad_ids = _outside(lake, "f02", -2.5, 2.5)
    assert 0 < len(bad_ids) < 0.05 * lake.table.num_rows
    tree = lake.job(
        "quarantine_out",
        quality={
            "input": _gate([{"type": "between", "column": "f02", "min": -2.5, "max": 2.5}], "quarantine", 0.05),
            "quarantine_table": str(tmp_path / "set_aside"),
        },
    )
    summary = run(build_job_config(tree), spark=spark)
    assert summary.rows_quarantined == len(bad_ids)
    assert summary.rows_read == summary.rows_written + summary.rows_quarantined + summary.rows_rejected
    written = set(read_delta(lake.root / "quarantine_out").column("customer_id").to_pylist())
    assert written.isdisjoint(bad_ids) and len(written) == summary.rows_written
    quarantined = read_delta(tmp_path / "set_aside")
    assert set(quarantined.column("customer_id").to_pylist()) == bad_ids
    assert set(quarantined.column("scoring_run_id").to_pylist()) == {summary.run_id}
    assert set(quarantined.column(QUARANTINE_STAGE).to_pylist()) == {"input"}
    assert all("between(column=f02" in r for r in quarantined.column(QUARANTINE_REASON).to_pylist())
    original = json.loads(quarantined.column(QUARANTINE_ROW)[0].as_py())
    assert set(original) >= {"customer_id", "ds", "f00", "f02"}  # the whole original row
    report = summary.quality["input"]
    assert not report["success"] and report["quarantined"] == len(bad_ids)  # expectations failed; rows set aside
    assert report["results"][0]["unexpected_count"] == len(bad_ids)


def test_quarantine_above_the_bound_fails_the_run(spark, lake, guarded):
    path, version, _ = guarded
    tree = lake.job(
        "quality_guarded",
        quality={"input": _gate([{"type": "between", "column": "f03", "min": -1, "max": 1}], "quarantine", 0.01)},
    )
    with pytest.raises(QualityError, match=r"above quality\.input\.max_bad_fraction = 1\.00%"):
        run(build_job_config(tree), spark=spark)
    assert delta_version(path) == version


def test_a_table_level_expectation_fails_the_run_even_with_quarantine(spark, lake, guarded):
    path, version, _ = guarded
    tree = lake.job(
        "quality_guarded",
        quality={"input": _gate([{"type": "row_count_between", "min": 1, "max": 10}], "quarantine", 1.0)},
    )
    with pytest.raises(QualityError, match=r"row_count_between\(min=1, max=10\): observed 3000"):
        run(build_job_config(tree), spark=spark)
    assert delta_version(path) == version


def test_a_failed_output_expectation_fails_before_the_commit(spark, lake, guarded):
    path, version, rows = guarded
    tree = lake.job(
        "quality_guarded", quality={"output": _gate([{"type": "mean_between", "column": "label", "min": 0.9}])}
    )
    with pytest.raises(
        QualityError, match=r"output gate failed.*mean_between\(column=label, min=0\.9\): observed 0\.\d+"
    ):
        run(build_job_config(tree), spark=spark)
    assert delta_version(path) == version and read_delta(path).num_rows == rows


def test_output_quarantine_keeps_failing_scores_out_of_the_table(spark, lake, tmp_path):
    tree = lake.job(
        "out_quarantine",
        quality={
            "output": _gate([{"type": "in_set", "column": "label", "values": [1]}], "quarantine", 1.0),
            "quarantine_table": str(tmp_path / "q"),
        },
    )
    summary = run(build_job_config(tree), spark=spark)
    out = read_delta(lake.root / "out_quarantine")
    quarantined = read_delta(tmp_path / "q")
    assert set(out.column("label").to_pylist()) == {1}
    assert summary.rows_written == out.num_rows and summary.rows_quarantined == quarantined.num_rows > 0
    assert summary.rows_written + summary.rows_quarantined == lake.table.num_rows
    assert set(quarantined.column(QUARANTINE_STAGE).to_pylist()) == {"output"}
    assert all(json.loads(r)["label"] == 0 for r in quarantined.column(QUARANTINE_ROW).to_pylist()[:20])


def test_rows_with_null_features_go_to_the_quarantine_table_in_skip_mode(spark, lake, tmp_path):
    table = lake.table.slice(0, 300)
    f00 = table.column("f00").to_numpy().copy()
    f00[[5, 6]] = np.nan
    table = table.set_column(table.schema.get_field_index("f00"), "f00", [f00])
    demo.write_delta(tmp_path / "dirty", table)
    tree = lake.job(
        "skip_quarantine",
        input={"table": str(tmp_path / "dirty"), "on_invalid_rows": "skip"},
        quality={"quarantine_table": str(tmp_path / "q")},
    )
    summary = run(build_job_config(tree), spark=spark)
    assert (summary.rows_read, summary.rows_written, summary.rows_rejected) == (300, 298, 2)
    quarantined = read_delta(tmp_path / "q")
    assert sorted(quarantined.column("customer_id").to_pylist()) == [5, 6]
    assert set(quarantined.column(QUARANTINE_REASON).to_pylist()) == {
        "invalid feature (null, NaN, infinite or beyond float32)"
    }


def test_validate_runs_a_gate_on_its_own(spark, lake, guarded):
    path, version, rows = guarded
    good = build_job_config(
        lake.job(
            "quality_guarded",
            quality={
                "input": _gate(
                    [
                        {"type": "not_null", "column": "f00"},
                        {"type": "in_set", "column": "ds", "values": ["2026-11-01"]},
                    ]
                ),
                "output": _gate([{"type": "between", "column": "label", "min": 0, "max": 1}]),
            },
        )
    )
    report = validate(good, "input", spark=spark, where="ds = '2026-11-01'")
    source = read_delta(lake.input_table)
    day = source.filter(pc.equal(source.column("ds"), "2026-11-01")).num_rows
    assert report.success and report.rows == day == 1000 and [r.success for r in report.results] == [True, True]
    output = validate(good, "output", spark=spark)
    assert output.success and output.rows == read_delta(path).num_rows == rows  # the whole output table
    with pytest.raises(QualityError, match=r"in_set\(column=ds"):
        validate(good, "input", spark=spark, where="ds = '2026-11-02'")
    empty = build_job_config(lake.job("quality_guarded"))
    assert validate(empty, "input", spark=spark).results == ()
    # On its own: a passing or failing gate writes nothing, neither to the output table nor to a quarantine table.
    assert delta_version(path) == version and read_delta(path).num_rows == rows
    assert delta_version(good.quarantine_table) is None
