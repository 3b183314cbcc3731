"""Tensor and multi-input models end to end: array columns in a Delta input feed [rows, n] ONNX inputs (one, or
several by name), scored by real Spark with the embedded onnxruntime, read back with delta-rs and compared with
onnxruntime's own run on the same rows. Small graphs built here with onnx.helper; one lake for the module."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from scoring import build_job_config, run
from scoring.errors import InputError, InvalidRowsError
from scoring.tools import demo
from tests.integration.conftest import read_delta
from tests.integration.tensor_models import SEQ, ids_mask_model, register_onnx

ROWS = 240
EMB = 8


def _emb_model():
    """``emb`` float [rows, 8] -> ``scores`` = emb @ W + b [rows, 3], and ``grid`` = emb reshaped [rows, 2, 4]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(EMB, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "B")
    shape = numpy_helper.from_array(np.array([-1, 2, 4], dtype=np.int64), "S")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["emb", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["scores"]),
            helper.make_node("Reshape", ["emb", "S"], ["grid"]),
        ],
        "emb",
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", EMB])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["N", 2, 4]),
        ],
        initializer=[w, b, shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _ort(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@dataclasses.dataclass
class TensorLake:
    root: Path
    table: pa.Table
    """customer_id, ds, emb (float[8]), token_ids (int64, 3 to 6 long: ragged), attention (int64[6])."""
    emb_model: object
    ids_mask_model: object

    def job(self, output: str, model: str, features: list[str], **input_keys) -> dict:
        return {
            "name": "tensors",
            "input": {"table": str(self.root / "input"), "key": "customer_id", "features": features, **input_keys},
            "model": {"uri": f"models:/{model}@champion"},
            "output": {"table": str(self.root / output), "partition_by": ["ds"]},
            "spark": {"master": "local[2]"},
        }


@pytest.fixture(scope="module")
def tensor_lake(tmp_path_factory, registry) -> TensorLake:
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("tensors")
    lengths = rng.integers(3, SEQ + 1, size=ROWS)
    token_ids = [rng.integers(1, 100, size=n).tolist() for n in lengths]
    table = pa.table(
        {
            "customer_id": pa.array(np.arange(ROWS, dtype=np.int64)),
            "ds": pa.array(["2026-11-01", "2026-11-02"] * (ROWS // 2)),
            "emb": pa.array(list(rng.normal(size=(ROWS, EMB)).astype(np.float32)), pa.list_(pa.float32())),
            "token_ids": pa.array(token_ids, pa.list_(pa.int64())),
            "attention": pa.array([[1] * n + [0] * (SEQ - n) for n in lengths], pa.list_(pa.int64())),
        }
    )
    demo.write_delta(root / "input", table)
    lake = TensorLake(root, table, _emb_model(), ids_mask_model())
    register_onnx(lake.emb_model, "tensor_emb")
    register_onnx(lake.ids_mask_model, "tensor_ids_mask")
    return lake


def _matrix(column: pa.ChunkedArray, dtype, width: int) -> np.ndarray:
    out = np.zeros((len(column), width), dtype=dtype)
    for i, row in enumerate(column.to_pylist()):
        out[i, : min(len(row), width)] = row[:width]
    return out


def _assert_ids_mask_predictions(lake: TensorLake, output: str) -> None:
    """The output holds, for every input row, the two-input model's own prediction on the row's padded ids and mask."""
    out = read_delta(lake.root / output).sort_by("customer_id")
    src = lake.table.sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == src.column("customer_id").to_pylist()
    ids, mask = _matrix(src.column("token_ids"), np.int64, SEQ), _matrix(src.column("attention"), np.int64, SEQ)
    (total,) = _ort(lake.ids_mask_model, {"ids": ids, "mask": mask})
    np.testing.assert_allclose(out.column("prediction").to_numpy(), total, rtol=1e-6)


def test_an_array_column_feeds_a_rows_by_n_input_and_a_3d_output_becomes_a_nested_list(spark, tensor_lake):
    summary = run(build_job_config(tensor_lake.job("emb_out", "tensor_emb", ["emb"])), spark=spark)
    out = read_delta(tensor_lake.root / "emb_out").sort_by("customer_id")
    src = tensor_lake.table.sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == src.column("customer_id").to_pylist()
    scores, grid = _ort(tensor_lake.emb_model, {"emb": _matrix(src.column("emb"), np.float32, EMB)})
    np.testing.assert_allclose(np.array(out.column("scores").to_pylist(), dtype=np.float32), scores, rtol=1e-6)
    assert out.schema.field("grid").type == pa.list_(pa.list_(pa.float32()))
    np.testing.assert_array_equal(np.array(out.column("grid").to_pylist(), dtype=np.float32), grid)
    assert summary.prediction_columns == ("scores", "grid")


def test_two_array_columns_feed_named_int64_inputs_mapped_and_padded_by_config(spark, tensor_lake):
    tensors = {"token_ids": {"input": "ids", "length": SEQ, "pad": 0}, "attention": {"input": "mask"}}
    job = tensor_lake.job("ids_out", "tensor_ids_mask", ["token_ids", "attention"], tensors=tensors)
    run(build_job_config(job), spark=spark)
    _assert_ids_mask_predictions(tensor_lake, "ids_out")


def test_a_ragged_array_column_is_refused_naming_the_column_a_key_and_the_lengths(spark, tensor_lake):
    tensors = {"token_ids": {"input": "ids"}, "attention": {"input": "mask"}}
    job = tensor_lake.job("ragged_out", "tensor_ids_mask", ["token_ids", "attention"], tensors=tensors)
    with pytest.raises(InputError) as caught:
        run(build_job_config(job), spark=spark)
    message = str(caught.value)
    assert "array column 'token_ids' is ragged" in message and "customer_id=" in message, message
    assert "lengths seen" in message and "input.tensors.token_ids.length" in message, message
    assert not (tensor_lake.root / "ragged_out").exists()


def test_null_and_nan_elements_are_set_aside_with_skip_and_named_with_fail(spark, tensor_lake):
    table = tensor_lake.table.select(["customer_id", "ds", "emb"]).slice(0, 40)
    emb = table.column("emb").to_pylist()
    emb[3][2], emb[11][0], emb[20] = None, float("nan"), None  # a null element, a NaN element, a null array
    table = table.set_column(2, "emb", pa.array(emb, pa.list_(pa.float32())))
    demo.write_delta(tensor_lake.root / "bad_input", table)
    job = tensor_lake.job("bad_out", "tensor_emb", ["emb"], table=str(tensor_lake.root / "bad_input"))

    with pytest.raises(InvalidRowsError, match=r"first at customer_id=3: emb"):
        run(build_job_config(job), spark=spark)

    job["input"]["on_invalid_rows"] = "skip"
    summary = run(build_job_config(job), spark=spark)
    assert summary.rows_rejected == 3
    out = read_delta(tensor_lake.root / "bad_out")
    assert sorted(out.column("customer_id").to_pylist()) == [i for i in range(40) if i not in (3, 11, 20)]
    quarantined = read_delta(tensor_lake.root / "bad_out_quarantine")
    assert sorted(quarantined.column("customer_id").to_pylist()) == [3, 11, 20]


def test_two_array_columns_through_a_triton_sidecar_give_the_models_own_predictions(spark, tensor_lake):
    tensors = {"token_ids": {"input": "ids", "length": SEQ}, "attention": {"input": "mask"}}
    job = tensor_lake.job("triton_out", "tensor_ids_mask", ["token_ids", "attention"], tensors=tensors)
    job["runtime"] = {"backend": "triton", "triton": {"launch": "auto", "batch_rows": 100}}
    run(build_job_config(job), spark=spark)
    _assert_ids_mask_predictions(tensor_lake, "triton_out")
