"""Planning a backfill: which days to score, skip or report without input. Pure: no Spark, no tables."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from scoring import build_job_config
from scoring.config import parse_overrides
from scoring.deploy.backfill import (
    FAILED,
    NO_INPUT,
    SCORE,
    SCORED,
    SKIP,
    BackfillError,
    DayResult,
    check_job,
    day_overrides,
    days,
    plan_backfill,
    raise_for_failures,
    score_column,
    score_values,
    to_score,
)
from scoring.errors import ConfigError

V1 = "models:/churn/1"
V2 = "models:/churn/2"
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
INPUT = {"2026-11-01": 10, "2026-11-02": 20, "2026-11-03": 30}


def _actions(plan):
    return {entry.day: entry.action for entry in plan}


def test_days_are_inclusive_at_both_ends():
    assert days("2026-11-01", "2026-11-03") == DAYS
    assert days("2026-11-05", "2026-11-05") == ["2026-11-05"]
    assert days(dt.date(2026, 12, 31), "2027-01-01") == ["2026-12-31", "2027-01-01"]


def test_an_end_before_the_start_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"end_date 2026-11-01 is before start_date 2026-11-05"):
        days("2026-11-05", "2026-11-01")


def test_a_date_that_is_not_a_date_is_named():
    with pytest.raises(ConfigError, match=r"start_date '2026-13-01' is not a date"):
        days("2026-13-01", "2026-11-05")


def test_nothing_scored_yet_means_every_day_with_input_is_scored():
    plan = plan_backfill({}, INPUT, DAYS, V1)
    assert _actions(plan) == dict.fromkeys(DAYS, SCORE)
    assert [e.input_rows for e in plan] == [10, 20, 30]
    assert [e.day for e in plan] == DAYS


def test_days_already_scored_with_the_same_version_are_skipped():
    plan = plan_backfill({"2026-11-01": {V1}, "2026-11-03": {V1}}, INPUT, DAYS, V1)
    assert _actions(plan) == {"2026-11-01": SKIP, "2026-11-02": SCORE, "2026-11-03": SKIP}
    assert [e.day for e in to_score(plan)] == ["2026-11-02"]


def test_days_scored_with_another_version_are_scored_again():
    plan = plan_backfill({"2026-11-01": {V1}, "2026-11-02": {V2}}, INPUT, DAYS, V2)
    assert _actions(plan) == {"2026-11-01": SCORE, "2026-11-02": SKIP, "2026-11-03": SCORE}
    assert "scored with models:/churn/1, not models:/churn/2" in plan[0].reason


def test_the_same_version_number_of_another_model_is_not_the_same_version():
    plan = plan_backfill({"2026-11-01": {"models:/other/1"}}, INPUT, DAYS[:1], V1)
    assert _actions(plan) == {"2026-11-01": SCORE}


def test_a_partition_holding_several_versions_is_scored_again():
    plan = plan_backfill({"2026-11-01": {V1, V2}}, INPUT, DAYS[:1], V1)
    assert _actions(plan) == {"2026-11-01": SCORE}


def test_force_scores_every_day_with_input_again():
    scored = dict.fromkeys(DAYS, {V1})
    plan = plan_backfill(scored, INPUT, DAYS, V1, force=True)
    assert _actions(plan) == dict.fromkeys(DAYS, SCORE)
    assert all("force" in e.reason for e in plan)


def test_days_without_input_are_no_input_even_with_force():
    plan = plan_backfill({"2026-11-04": {V1}}, INPUT, [*DAYS, "2026-11-04", "2026-11-05"], V1, force=True)
    assert _actions(plan)["2026-11-04"] == NO_INPUT
    assert _actions(plan)["2026-11-05"] == NO_INPUT
    assert plan[3].input_rows == 0 and "output still holds rows scored with models:/churn/1" in plan[3].reason
    assert [e.day for e in to_score(plan)] == DAYS


def test_a_day_with_zero_input_rows_is_no_input():
    plan = plan_backfill({}, {**INPUT, "2026-11-02": 0}, DAYS, V1)
    assert _actions(plan)["2026-11-02"] == NO_INPUT


def _config(**changes):
    tree = {
        "input": {"table": "/lake/in", "key": "id", **changes.get("input", {})},
        "model": {"uri": "models:/churn@champion"},
        "output": {"table": "/lake/out", "partition_by": changes.get("partition_by", ["ds"])},
    }
    if "run_id" in changes:
        tree["run_id"] = changes["run_id"]
    return build_job_config(tree)


def test_a_day_pins_its_partition_and_the_model_version():
    parsed = parse_overrides(day_overrides(_config(), "2026-11-02", V1))
    assert parsed == {"input.where": "ds = '2026-11-02'", "model.uri": V1}


def test_a_day_keeps_the_jobs_own_filter_and_gets_a_run_id_of_its_own():
    config = _config(input={"where": "country = 'NL'"}, run_id="backfill-1")
    parsed = parse_overrides(day_overrides(config, "2026-11-02", V1))
    assert parsed["input.where"] == "(country = 'NL') AND ds = '2026-11-02'"
    assert parsed["run_id"] == "backfill-1-2026-11-02"


def test_an_output_not_partitioned_by_day_is_refused():
    with pytest.raises(ConfigError, match=r"must be partitioned by it"):
        check_job(_config(partition_by=[]), "ds")
    check_job(_config(), "ds")


def test_failed_days_are_raised_together_after_the_others():
    results = [DayResult("2026-11-01", SCORED), DayResult("2026-11-02", FAILED, "InputError: nothing to score")]
    with pytest.raises(BackfillError, match=r"1 of 2 day\(s\) failed(.|\n)*2026-11-02: InputError: nothing to score"):
        raise_for_failures(results)
    raise_for_failures(results[:1])


def test_the_plotted_column_is_the_first_floating_prediction():
    schema = pa.schema(
        [
            ("customer_id", pa.int64()),
            ("ds", pa.string()),
            ("label", pa.int64()),
            ("probabilities", pa.list_(pa.float32())),
            ("model_version", pa.string()),
        ]
    )
    assert score_column(schema, {"customer_id", "ds"}) == "probabilities"
    assert score_column(schema.remove(3), {"customer_id", "ds"}) == "label"
    assert score_column(pa.schema([("customer_id", pa.int64())]), {"customer_id"}) is None


def test_an_array_score_is_its_last_element():
    probabilities = pa.chunked_array([[[0.9, 0.1], None], [[0.25, 0.75], []]], pa.list_(pa.float32()))
    np.testing.assert_allclose(score_values(probabilities), [0.1, 0.75])
    np.testing.assert_allclose(score_values(pa.array([1.5, None, 2.5])), [1.5, 2.5])
