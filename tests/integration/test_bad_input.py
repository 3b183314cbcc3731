"""Bad input gets a clear error that names what is wrong, and the output table is left exactly as it was."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from scoring import build_job_config, run
from scoring.errors import InputError, InvalidRowsError, ModelError, OutputError, OutputValidationError
from scoring.tools import demo
from tests.integration.conftest import FEATURES, delta_version, read_delta

OUTPUT = "guarded_out"


@pytest.fixture(scope="module")
def guarded(spark, lake):
    """An output table with one good run in it; every bad run below must leave it exactly so."""
    run(build_job_config(lake.job(OUTPUT)), spark=spark)
    path = lake.root / OUTPUT
    return path, delta_version(path), read_delta(path).sort_by("customer_id")


def _dirty(tmp_path, lake, column, values_at, value):
    table = lake.table.slice(0, 600)
    data = table.column(column).to_numpy().copy()
    arr = pa.array(data, mask=np.isin(np.arange(len(data)), values_at)) if value is None else None
    if value is not None:
        data[values_at] = value
        arr = pa.array(data)
    table = table.set_column(table.schema.get_field_index(column), column, arr)
    demo.write_delta(tmp_path / "dirty", table)
    return str(tmp_path / "dirty")


def _string_features(tmp_path, lake):
    table = lake.table.slice(0, 100)
    idx = table.schema.get_field_index("f02")
    table = table.set_column(idx, "f02", table.column("f02").cast(pa.string()))
    demo.write_delta(tmp_path / "strings", table)
    return str(tmp_path / "strings")


CASES = {
    "missing input table": (
        lambda tmp, lake: {"input": {"table": str(tmp / "nope")}},
        InputError,
        ["no Delta table", "nope"],
    ),
    "missing key column": (lambda tmp, lake: {"input": {"key": "client_id"}}, InputError, ["input.key", "client_id"]),
    "missing feature column": (
        lambda tmp, lake: {"input": {"features": [*FEATURES[:-1], "f99"]}, "model": {"uri": "models:/onnx_clf/1"}},
        ModelError,
        ["input.features", "f99", "signature"],
    ),
    "missing partition column": (
        lambda tmp, lake: {"output": {"partition_by": ["day"]}},
        InputError,
        ["output.partition_by", "day"],
    ),
    "string feature": (
        lambda tmp, lake: {"input": {"table": _string_features(tmp, lake)}},
        InputError,
        ["f02", "string"],
    ),
    "NaN feature": (
        lambda tmp, lake: {"input": {"table": _dirty(tmp, lake, "f03", [7], np.nan)}},
        InvalidRowsError,
        ["customer_id=7", "f03", "on_invalid_rows"],
    ),
    "null feature": (
        lambda tmp, lake: {"input": {"table": _dirty(tmp, lake, "f01", [450], None)}},
        InvalidRowsError,
        ["customer_id=450", "f01"],
    ),
    "unknown model": (
        lambda tmp, lake: {"model": {"uri": "models:/no_such_model@champion"}},
        ModelError,
        ["no_such_model", "onnx_clf"],
    ),
    "unknown alias": (lambda tmp, lake: {"model": {"uri": "models:/onnx_clf@nightly"}}, ModelError, ["nightly"]),
    "unknown version": (lambda tmp, lake: {"model": {"uri": "models:/onnx_clf/99"}}, ModelError, ["onnx_clf/99"]),
    "signature mismatch": (
        lambda tmp, lake: {"input": {"features": FEATURES[:3]}},
        ModelError,
        ["expects features", "input.features"],
    ),
    "empty selection": (
        lambda tmp, lake: {"input": {"where": "ds = '1999-01-01'"}},
        InputError,
        ["nothing to score", "1999-01-01"],
    ),
    "invalid filter": (
        lambda tmp, lake: {"input": {"where": "no_such_col > 1"}},
        InputError,
        ["input.where", "no_such_col"],
    ),
    "input version past the latest": (
        lambda tmp, lake: {"input": {"version": 42}},
        InputError,
        ["input.version", "42"],
    ),
    "output partitioned differently": (
        lambda tmp, lake: {"output": {"partition_by": []}},
        OutputError,
        ["output.partition_by", "ds"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_with_a_clear_error_and_the_output_unchanged(spark, lake, guarded, tmp_path, case):
    path, version, rows = guarded
    overrides, error, words = CASES[case]
    with pytest.raises(error) as caught:
        run(build_job_config(lake.job(OUTPUT, **overrides(tmp_path, lake))), spark=spark)
    message = str(caught.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    assert "how to fix" in message
    assert delta_version(path) == version
    assert read_delta(path).sort_by("customer_id").equals(rows)


def _wrong_rows_model(name: str, lake) -> str:
    """A real pyfunc model that drops a row from every batch (defined inline so it pickles by value)."""
    import mlflow

    class DropsARow(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return np.zeros(max(len(model_input) - 1, 0))

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=DropsARow(), registered_model_name=name)
    return str(info.registered_model_version)


def test_a_model_that_returns_the_wrong_number_of_rows_commits_nothing(spark, lake, guarded):
    path, version, rows = guarded
    v = _wrong_rows_model("drops_a_row", lake)
    with pytest.raises(OutputValidationError, match=r"returned 15 rows for a batch of 16"):
        run(
            build_job_config(lake.job(OUTPUT, model={"uri": f"models:/drops_a_row/{v}"}, input={"features": FEATURES})),
            spark=spark,
        )
    assert delta_version(path) == version
    assert read_delta(path).sort_by("customer_id").equals(rows)


def test_a_worker_error_mid_job_reaches_the_driver_as_the_same_error(spark, lake, guarded, tmp_path):
    """The first rows are clean (the driver's probe passes); a NaN deep in the table fails inside a Spark worker."""
    path, version, rows = guarded
    table = _dirty(tmp_path, lake, "f04", [599], np.nan)
    with pytest.raises(InvalidRowsError, match=r"customer_id=599.*f04"):
        run(build_job_config(lake.job(OUTPUT, input={"table": table})), spark=spark)
    assert delta_version(path) == version
