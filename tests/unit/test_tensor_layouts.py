"""Array feature columns as model tensors, without Spark: layouts, [rows, n] arrays, padding, ragged rows, the
element-wise validity rule, nested outputs."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from scoring.config import build_job_config
from scoring.core import tensors
from scoring.core.batching import name_outputs, nonfinite_mask
from scoring.core.score import ScoringSpec, score_batch
from scoring.errors import ConfigError, InputError, ModelError


def _ids(rows):
    return pa.array(rows, pa.list_(pa.int64()))


def test_a_list_column_becomes_a_rows_by_n_array_of_the_inputs_dtype():
    out = tensors.matrix(
        pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float64())), tensors.TensorLayout("e", "e"), np.float32
    )
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])


def test_a_fixed_size_list_column_and_a_sliced_list_column_keep_their_rows():
    fixed = pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int32(), 2))
    np.testing.assert_array_equal(
        tensors.matrix(fixed, tensors.TensorLayout("f", "f"), np.int64), [[1, 2], [3, 4], [5, 6]]
    )
    sliced = _ids([[9], [1, 2], [3, 4]]).slice(1, 2)
    np.testing.assert_array_equal(tensors.matrix(sliced, tensors.TensorLayout("i", "i"), np.int64), [[1, 2], [3, 4]])


def test_a_configured_length_pads_short_rows_and_truncates_long_ones():
    layout = tensors.TensorLayout("ids", "ids", length=3, pad=-1)
    out = tensors.matrix(_ids([[1], [1, 2, 3, 4], [], [5, 6]]), layout, np.int64)
    np.testing.assert_array_equal(out, [[1, -1, -1], [1, 2, 3], [-1, -1, -1], [5, 6, -1]])


def test_ragged_rows_are_refused_with_the_first_odd_row_and_the_lengths_seen():
    with pytest.raises(tensors.RaggedRows) as caught:
        tensors.matrix(_ids([[1, 2], [1, 2], [1, 2, 3], [1]]), tensors.TensorLayout("ids", "ids"), np.int64)
    assert (caught.value.row, caught.value.first, caught.value.odd, caught.value.lengths) == (2, 2, 3, (1, 2, 3))
    again = pickle.loads(pickle.dumps(caught.value))
    assert str(again) == str(caught.value)


def test_a_ragged_batch_fails_naming_the_column_and_the_rows_keys():
    class Echo:  # a predictor that feeds each array column as the model input of its name would
        def predict(self, features):
            ids = tensors.feed(features.column("ids"), tensors.TensorLayout("ids", "ids"), np.int64, ["N", None], "m")
            return name_outputs({"y": ids.sum(axis=1).astype(np.float32)}, features.num_rows)

    batch = pa.record_batch({"k": [10, 11, 12], "ids": _ids([[1, 2], [3, 4], [5]])})
    spec = ScoringSpec(("ids",), ("k",), ("k",), "models:/m/1")
    with pytest.raises(InputError, match=r"'ids' is ragged: the row at k=10 has 2 elements, the row at k=12 has 1"):
        score_batch(batch, Echo(), spec)
    ok = score_batch(pa.record_batch({"k": [1], "ids": _ids([[1, 2]])}), Echo(), spec)
    assert ok.column("prediction").to_pylist() == [3.0]


def test_an_inputs_static_width_is_checked_against_the_arrays():
    column = pa.array([[1.0, 2.0, 3.0]], pa.list_(pa.float32()))
    with pytest.raises(ModelError, match=r"input 'emb' takes 8 elements per row, column 'e' has 3") as caught:
        tensors.feed(column, tensors.TensorLayout("e", "emb"), np.float32, ["N", 8], "models:/m/1")
    assert "input.tensors.e.length: 8" in caught.value.hint
    with pytest.raises(ModelError, match="rank-3"):
        tensors.feed(column, tensors.TensorLayout("e", "emb"), np.float32, ["N", 3, 1], "models:/m/1")
    scalar = tensors.feed(pa.array([1, 2]), tensors.TensorLayout("x", "x"), np.float32, ["N", 1], "m")
    assert scalar.shape == (2, 1)


def test_an_array_row_is_invalid_when_null_or_holding_a_null_nan_infinite_or_huge_element():
    batch = pa.record_batch(
        {
            "x": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            "e": pa.array(
                [[1.0, 2.0], None, [1.0, None], [float("nan"), 1.0], [float("inf"), 1.0], [1e39, 0.0]],
                pa.list_(pa.float64()),
            ),
            "ids": _ids([[1], [1], [1], [1], [1], [1]]),
        }
    )
    mask = tensors.invalid_mask(batch, ["x", "e", "ids"])
    assert mask.tolist() == [False, True, True, True, True, True]
    assert tensors.invalid_mask(batch.slice(0, 1), ["x", "e", "ids"]) is None


def test_a_three_dimensional_output_becomes_a_nested_list_and_its_nan_is_found():
    values = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    values[1, 2, 0] = np.nan
    out = name_outputs({"grid": values}, 2)
    assert out.schema.field("prediction").type == pa.list_(pa.list_(pa.float32()))
    assert out.column(0).to_pylist()[0] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert nonfinite_mask(out).tolist() == [False, True]


def test_layouts_map_columns_to_inputs_from_config_and_default_to_the_columns_name():
    config = build_job_config(
        {
            "name": "t",
            "input": {
                "table": "/tmp/in",
                "key": "k",
                "features": ["token_ids", "mask"],
                "tensors": {"token_ids": {"input": "ids", "length": 6}},
            },
            "model": {"uri": "models:/m@champion"},
            "output": {"table": "/tmp/out"},
        }
    )
    layout = tensors.layouts(["token_ids", "mask"], config.input.tensors)
    assert layout == (tensors.TensorLayout("token_ids", "ids", 6, 0.0), tensors.TensorLayout("mask", "mask"))
    assert tensors.input_names(layout) == ("ids", "mask")


def test_an_unknown_key_under_input_tensors_is_a_config_error():
    with pytest.raises(ConfigError, match="tensors"):
        build_job_config(
            {
                "name": "t",
                "input": {"table": "/tmp/in", "key": "k", "tensors": {"ids": {"lenght": 6}}},
                "model": {"uri": "models:/m@champion"},
                "output": {"table": "/tmp/out"},
            }
        )


def test_the_triton_export_writes_each_array_inputs_width_from_the_onnx_graph():
    from onnx import TensorProto, helper

    from scoring.adapters.triton_export import build_config
    from scoring.config import TritonModelConfig

    graph = helper.make_graph(
        [helper.make_node("Mul", ["ids", "mask"], ["kept"])],
        "g",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", "S"]),
        ],
        [helper.make_tensor_value_info("kept", TensorProto.INT64, ["N", 6])],
    )
    config = build_config("m", helper.make_model(graph), "python", TritonModelConfig(max_batch_size=64), [1])
    assert config.max_batch_size == 64  # the batch dimension is Triton's: [-1, 6] as the server shows it
    assert [(i.name, list(i.dims)) for i in config.input] == [("ids", [6]), ("mask", [-1])]
    from tritonclient.grpc import model_config_pb2 as mc

    assert [i.data_type for i in config.input] == [mc.DataType.Value("TYPE_INT64")] * 2
