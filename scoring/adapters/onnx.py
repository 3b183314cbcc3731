"""scikit-learn -> ONNX (skl2onnx), one way for the whole project: the demo's models and Triton export."""

from __future__ import annotations

import numpy as np

from scoring.errors import require_extra


def sklearn_to_onnx(model, n_features: int, dtype=np.float32):
    """`model` as an ``onnx.ModelProto`` with one 2-D input ``X`` of `n_features` columns and plain tensor outputs
    (classifiers without ZipMap, so probabilities are a ``(rows, classes)`` tensor)."""
    require_extra("demo", "converting a scikit-learn model to ONNX")
    from skl2onnx import to_onnx

    options = {"zipmap": False} if hasattr(model, "predict_proba") else None
    return to_onnx(model, np.zeros((1, n_features), dtype=dtype), options=options, target_opset=17)
