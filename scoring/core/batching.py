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


def invalid_mask(batch: pa.RecordBatch, features: Sequence[str]) -> np.ndarray | None:
    """Boolean mask of rows with a null or NaN in any feature column, or None when every row is valid."""
    mask: np.ndarray | None = None
    for name in features:
        column = batch.column(name)
        bad = None
        if column.null_count:
            bad = column.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_floating(column.type):
            nan = pc.is_nan(column).to_numpy(zero_copy_only=False)
            nan = np.nan_to_num(nan, nan=False).astype(bool) if nan.dtype != bool else nan
            bad = nan if bad is None else (bad | nan)
        if bad is not None and bad.any():
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
