"""Arrow batches <-> model inputs and outputs, without per-row Python loops."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoring.columns import PREDICTION


def feature_matrix(batch: pa.RecordBatch, features: Sequence[str], dtype: np.dtype | type = np.float32) -> np.ndarray:
    """The feature columns of `batch` as one C-contiguous ``(rows, len(features))`` array of `dtype`."""
    out = np.empty((batch.num_rows, len(features)), dtype=dtype)
    for j, name in enumerate(features):
        out[:, j] = batch.column(name).to_numpy(zero_copy_only=False)
    return out


FEATURE_LIMIT = float(np.finfo(np.float32).max)
"""The largest feature magnitude accepted: models here take float32 (ONNX ``tensor(float)``, Triton ``FP32``), so a
larger value would reach the model as infinity."""


def invalid_mask(batch: pa.RecordBatch, features: Sequence[str]) -> np.ndarray | None:
    """Boolean mask of rows with a null, NaN, infinite or float32-overflowing value in any feature column, or None
    when every row is valid."""
    mask: np.ndarray | None = None
    for name in features:
        column = batch.column(name)
        bad = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else None
        if pa.types.is_floating(column.type) or pa.types.is_integer(column.type) or pa.types.is_decimal(column.type):
            values = column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
            with np.errstate(invalid="ignore"):
                out = ~(np.abs(values) <= FEATURE_LIMIT)  # NaN compares False, so it is out too
            if column.null_count:
                out &= ~column.is_null().to_numpy(zero_copy_only=False)
            bad = out if bad is None else (bad | out)
        if bad is not None and bad.any():
            mask = bad if mask is None else (mask | bad)
    return mask


def nonfinite_mask(batch: pa.RecordBatch) -> np.ndarray | None:
    """Boolean mask of rows whose floating-point outputs (scalar or list columns) hold NaN or an infinity, or None
    when every row is finite."""
    mask: np.ndarray | None = None
    for column in batch.columns:
        kind = column.type
        if pa.types.is_floating(kind):
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)
            bad = ~np.isfinite(values)
            if column.null_count:
                bad &= ~column.is_null().to_numpy(zero_copy_only=False)
        elif (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_floating(kind.value_type):
            flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float64)
            parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
            bad = np.zeros(len(column), dtype=bool)
            bad[parents[~np.isfinite(flat)]] = True
        else:
            continue
        if bad.any():
            mask = bad if mask is None else (mask | bad)
    return mask


def _column_name(name: str) -> str:
    cleaned = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_")
    return cleaned or "output"


def _to_arrow(values: np.ndarray, rows: int, name: str) -> pa.Array:
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim == 1:
        return pa.array(values)
    if values.ndim == 2:
        flat = pa.array(np.ascontiguousarray(values).reshape(-1))
        offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, flat)
    raise ValueError(f"model output {name!r} has shape {values.shape}; expected (rows,), (rows, 1) or (rows, k)")


def name_outputs(outputs: Mapping[str, np.ndarray], rows: int) -> pa.RecordBatch:
    """Model outputs as an Arrow batch: a single output becomes ``prediction``; several keep their (cleaned) names.

    ``(rows,)`` and ``(rows, 1)`` outputs become scalar columns, ``(rows, k)`` a list column.
    """
    if len(outputs) == 1:
        ((name, values),) = outputs.items()
        return pa.RecordBatch.from_arrays([_to_arrow(values, rows, name)], names=[PREDICTION])
    names = [_column_name(n) for n in outputs]
    return pa.RecordBatch.from_arrays([_to_arrow(v, rows, n) for n, v in outputs.items()], names=names)
