from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from scoring import columns
from scoring.core.batching import feature_matrix, invalid_mask, name_outputs
from scoring.core.score import ScoringSpec, score_batch
from scoring.core.stamp import LINEAGE_SCHEMA, Lineage, stamp_batch
from scoring.errors import InvalidRowsError, ModelError, OutputValidationError, from_spark_exception

SPEC = ScoringSpec(features=("a", "b"), passthrough=("id", "ds"), key=("id",), model="models:/m/1")


def _batch(a=(1.0, 2.0, 3.0), b=(4.0, 5.0, 6.0)):
    return pa.RecordBatch.from_pydict(
        {"id": [10, 11, 12], "ds": ["d1", "d1", "d2"], "a": pa.array(a, pa.float32()), "b": pa.array(b, pa.float64())}
    )


class Linear:
    """A real (tiny) predictor: a fixed linear model over the feature matrix."""

    def predict(self, features):
        x = feature_matrix(features, features.schema.names, np.float64)
        return name_outputs({"y": x @ np.array([1.0, 10.0])}, features.num_rows)


def test_feature_matrix_stacks_columns_in_the_given_order():
    m = feature_matrix(_batch(), ["b", "a"])
    assert m.dtype == np.float32 and m.flags.c_contiguous
    np.testing.assert_array_equal(m, [[4, 1], [5, 2], [6, 3]])


def test_invalid_mask_flags_nulls_and_nans_only():
    assert invalid_mask(_batch(), ["a", "b"]) is None
    mask = invalid_mask(_batch(a=(1.0, None, 3.0), b=(4.0, 5.0, float("nan"))), ["a", "b"])
    np.testing.assert_array_equal(mask, [False, True, True])


def test_a_single_output_is_named_prediction_and_several_keep_their_names():
    one = name_outputs({"variable": np.ones((3, 1), np.float32)}, 3)
    assert one.schema.names == [columns.PREDICTION] and one.column(0).type == pa.float32()
    several = name_outputs({"label": np.array([0, 1, 1]), "probabilities": np.ones((3, 2), np.float32)}, 3)
    assert several.schema.names == ["label", "probabilities"]
    assert several.column(1).type == pa.list_(pa.float32())
    assert several.column(1).to_pylist() == [[1.0, 1.0]] * 3


def test_score_batch_keeps_passthrough_columns_and_appends_predictions():
    out = score_batch(_batch(), Linear(), SPEC)
    assert out.schema.names == ["id", "ds", columns.PREDICTION]
    assert out.column("id").to_pylist() == [10, 11, 12]
    np.testing.assert_allclose(out.column(columns.PREDICTION).to_numpy(), [41, 52, 63])


def test_a_nan_feature_names_the_row_key_and_the_column():
    with pytest.raises(InvalidRowsError, match=r"1 row\(s\) in this batch, first at id=11: null, NaN, .* in b"):
        score_batch(_batch(b=(4.0, float("nan"), 6.0)), Linear(), SPEC)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), 1e39, -3.5e38])
def test_an_infinite_or_float32_overflowing_feature_is_invalid_too(bad):
    with pytest.raises(InvalidRowsError, match=r"first at id=12: .* in b"):
        score_batch(_batch(b=(4.0, 5.0, bad)), Linear(), SPEC)


def test_the_largest_float32_feature_is_still_valid():
    score_batch(_batch(b=(4.0, 5.0, float(np.finfo(np.float32).max))), Linear(), SPEC)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_nonfinite_prediction_fails_the_batch_naming_the_key(bad):
    class Bad:
        def predict(self, features):
            return pa.RecordBatch.from_arrays([pa.array([1.0, bad, 2.0])], names=[columns.PREDICTION])

    with pytest.raises(OutputValidationError, match=r"NaN or infinite predictions for 1 row\(s\).*first at id=11"):
        score_batch(_batch(), Bad(), SPEC)
    out = score_batch(_batch(), Bad(), dataclasses.replace(SPEC, allow_nonfinite=True))
    assert out.num_rows == 3


def test_a_nonfinite_value_inside_a_list_prediction_is_found():
    class Probabilities:
        def predict(self, features):
            values = pa.array([[0.5, 0.5], [0.1, float("nan")], [1.0, 0.0]], type=pa.list_(pa.float32()))
            return pa.RecordBatch.from_arrays([values], names=["probabilities"])

    with pytest.raises(OutputValidationError, match="first at id=11"):
        score_batch(_batch(), Probabilities(), SPEC)


def test_a_wrong_row_count_is_caught_before_anything_is_written():
    class Short:
        def predict(self, features):
            return name_outputs({"y": np.zeros(features.num_rows - 1)}, features.num_rows - 1)

    with pytest.raises(OutputValidationError, match="returned 2 rows for a batch of 3"):
        score_batch(_batch(), Short(), SPEC)


def test_a_dtype_change_between_batches_is_caught():
    spec = ScoringSpec(**{**SPEC.__dict__, "output_schema": pa.schema([(columns.PREDICTION, pa.float32())])})
    with pytest.raises(OutputValidationError, match="first batch returned"):
        score_batch(_batch(), Linear(), spec)  # Linear returns float64


def test_a_runtime_error_inside_the_model_becomes_a_model_error_naming_the_model():
    class Broken:
        def predict(self, features):
            raise RuntimeError("shape mismatch in layer 3")

    with pytest.raises(ModelError, match=r"models:/m/1 failed on a batch of 3 rows: RuntimeError: shape mismatch"):
        score_batch(_batch(), Broken(), SPEC)


def test_an_empty_batch_gives_an_empty_batch_of_the_output_schema():
    spec = ScoringSpec(**{**SPEC.__dict__, "output_schema": pa.schema([(columns.PREDICTION, pa.float64())])})
    out = score_batch(_batch().slice(0, 0), Linear(), spec)
    assert out.num_rows == 0 and out.schema.names == ["id", "ds", columns.PREDICTION]


def test_stamp_batch_adds_every_lineage_column_with_its_type():
    lineage = Lineage("churn", "3", "models:/churn/3", 7, "run-1", dt.datetime(2026, 11, 24, tzinfo=dt.UTC))
    out = stamp_batch(score_batch(_batch(), Linear(), SPEC), lineage)
    assert out.schema.names[-len(columns.LINEAGE) :] == list(columns.LINEAGE)
    for field in LINEAGE_SCHEMA:
        assert out.schema.field(field.name).type == field.type
    assert set(out.column(columns.MODEL_URI).to_pylist()) == {"models:/churn/3"}
    assert lineage.as_json_dict()[columns.SCORED_AT] == "2026-11-24T00:00:00+00:00"


def test_errors_pickle_with_their_hint():
    error = InvalidRowsError("bad row", hint="clean it")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is InvalidRowsError and back.hint == "clean it" and str(back) == str(error)


def test_a_worker_error_is_rebuilt_from_sparks_traceback_text():
    text = (
        "org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
        '  File "scoring/core/score.py", line 40, in check_features\n'
        "scoring.errors.InvalidRowsError: rows with null or NaN features: first at id=7\n"
        "  how to fix: clean the input\n\n\tat org.apache.spark.api.python..."
    )
    error = from_spark_exception(RuntimeError(text))
    assert type(error) is InvalidRowsError
    assert error.message == "rows with null or NaN features: first at id=7" and error.hint == "clean the input"
    assert from_spark_exception(RuntimeError("java.lang.OutOfMemoryError")) is None


def test_the_core_imports_no_engine_registry_server_or_network_library():
    forbidden = {
        "pyspark",
        "mlflow",
        "tritonclient",
        "great_expectations",
        "delta",
        "deltalake",
        "airflow",
        "onnxruntime",
        "requests",
        "httpx",
        "grpc",
    }
    core = Path(__file__).resolve().parents[2] / "scoring" / "core"
    for path in core.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
