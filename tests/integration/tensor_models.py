"""Small ONNX models built here (onnx.helper, fixed weights) and their registration, shared by the tensor tests and
the predictor contract."""

from __future__ import annotations

import numpy as np

from scoring.tools import demo

SEQ = 6


def ids_mask_model():
    """``ids`` int64 [rows, 6] + ``mask`` int64 [rows, 6] -> ``total`` float [rows]: the masked ids' sum, weighted."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.linspace(0.5, 1.5, SEQ).astype(np.float32), "Wt")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["ids", "mask"], ["kept"]),
            helper.make_node("Cast", ["kept"], ["kept_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["kept_f", "Wt"], ["weighted"]),
            helper.make_node("ReduceSum", ["weighted", "axes"], ["total"], keepdims=0),
        ],
        "ids_mask",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", SEQ]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", SEQ]),
        ],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"])],
        initializer=[weights, axes],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def register_onnx(model, name: str):
    """Log `model` to the session's registry as `name`, alias ``champion``; returns its resolved ModelRef."""
    import mlflow
    from mlflow import MlflowClient

    from scoring.adapters.registry import resolve_model

    with demo._mlflow_chatter_held(), mlflow.start_run(run_name=f"tensor-{name}"):
        info = mlflow.onnx.log_model(model, name="model", registered_model_name=name)
    MlflowClient().set_registered_model_alias(name, "champion", str(info.registered_model_version))
    return resolve_model(f"models:/{name}@champion")
