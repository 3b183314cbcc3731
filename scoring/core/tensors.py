"""Array feature columns as model tensors: which column feeds which model input, the ``(rows, n)`` array each array
column becomes (padded or truncated when configured, refused when ragged), the same validity rule as scalar features
(null, NaN, infinite, beyond float32) applied element-wise, and multi-dimensional outputs as nested list columns.

An array column is an Arrow ``list``, ``large_list`` or ``fixed_size_list`` of numbers (Spark ``ArrayType``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoring.core import rules_arrow


@dataclasses.dataclass(frozen=True)
class TensorLayout:
    """How one feature column feeds the model: the input it feeds, and the fixed length its arrays are padded or
    truncated to (None: rows must all have one length)."""

    column: str
    input: str
    length: int | None = None
    pad: float = 0.0


def layouts(features: Sequence[str], tensors: Mapping[str, Any] | None) -> tuple[TensorLayout, ...]:
    """One layout per feature column, from ``input.tensors`` (column -> a config object or a dict with `input`,
    `length`, `pad`); a column not listed feeds the input of its own name."""
    out = []
    for column in features:
        conf = (tensors or {}).get(column)
        if conf is None:
            out.append(TensorLayout(column, column))
            continue
        given = dict(conf) if isinstance(conf, Mapping) else vars(conf)
        out.append(
            TensorLayout(column, given.get("input") or column, given.get("length"), float(given.get("pad") or 0))
        )
    return tuple(out)


def input_names(layout: Sequence[TensorLayout]) -> tuple[str, ...]:
    """The model input each feature column feeds, in the features' order."""
    return tuple(t.input for t in layout)


def is_array(kind: pa.DataType) -> bool:
    """Whether `kind` is a list (of any nesting) of numbers."""
    while _is_list(kind):
        kind = kind.value_type
        if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_decimal(kind):
            return True
    return False


class RaggedRows(ValueError):
    """Rows of one array column with different lengths in one batch (no ``length`` configured for it). Raised by
    :func:`matrix` where the row's key is unknown; :mod:`scoring.core.score` turns it into an
    :class:`~scoring.errors.InputError` naming the key."""

    def __init__(self, column: str, row: int, lengths: Sequence[int], first: int, odd: int) -> None:
        self.column, self.row, self.lengths, self.first, self.odd = column, row, tuple(lengths), first, odd
        super().__init__(
            f"array column {column!r} is ragged: its batch's first row has {first} elements, row {row} has {odd} "
            f"(lengths seen: {list(lengths)})"
        )

    def __reduce__(self):
        return (RaggedRows, (self.column, self.row, self.lengths, self.first, self.odd))


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _flat(column: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The innermost values of a (possibly nested) list column and, for each, the row it belongs to."""
    parents = np.arange(len(column))
    while _is_list(column.type):
        inner = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        parents = parents[inner]
        column = pc.list_flatten(column)
    return column, parents


def flat_values(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The innermost values of a (possibly nested) list column as float64 (nulls as NaN), and each one's row."""
    values, parents = _flat(column)
    return values.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False), parents


def invalid_mask(batch: pa.RecordBatch, features: Sequence[str]) -> np.ndarray | None:
    """Boolean mask of rows with an invalid value in any feature column, scalar or array (the one rule,
    :class:`scoring.core.rules.ValueRule`: an array row is invalid when it is null or holds a null, NaN, infinite or
    beyond-float32 element), or None when every row is valid."""
    mask = rules_arrow.invalid_mask(batch, rules_arrow.feature_rules(batch.schema, features))
    if not pc.any(mask).as_py():
        return None
    return mask.to_numpy(zero_copy_only=False)


def matrix(column: pa.Array, layout: TensorLayout, dtype: np.dtype | type) -> np.ndarray:
    """A 1-level array column as one C-contiguous ``(rows, n)`` array of `dtype`: `n` is ``layout.length`` (shorter
    rows padded with ``layout.pad``, longer ones truncated) or, when not set, the rows' common length; rows of
    different lengths raise :class:`RaggedRows`. The column is expected valid (see :func:`invalid_mask`)."""
    rows = len(column)
    if pa.types.is_fixed_size_list(column.type) and layout.length in (None, column.type.list_size):
        width = column.type.list_size
        values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(values.reshape(rows, width), dtype=dtype)
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    if layout.length is None:
        if rows and (lengths != lengths[0]).any():
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            seen = sorted(set(lengths.tolist()))[:10]
            raise RaggedRows(layout.column, row, seen, int(lengths[0]), int(lengths[row]))
        width = int(lengths[0]) if rows else 0
        return np.ascontiguousarray(values.reshape(rows, width), dtype=dtype)
    width = layout.length
    out = np.full((rows, width), layout.pad, dtype=dtype)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if rows else np.zeros(0, np.int64)
    take = np.minimum(lengths, width)
    # row r's first take[r] elements: flat positions starts[r] + j for j < take[r]
    cols = np.arange(width)
    keep = cols[None, :] < take[:, None]
    out[keep] = values[(starts[:, None] + cols[None, :])[keep]]
    return out


def nested(values: np.ndarray) -> pa.Array:
    """An output of shape ``(rows, a, b, ...)`` as a nested list column (``list<list<...>>``), one row per row."""
    values = np.ascontiguousarray(values)
    out: pa.Array = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):
        count = len(out) // size
        out = pa.ListArray.from_arrays(pa.array(np.arange(0, count * size + 1, size, dtype=np.int32)), out)
    return out


def feed(column: pa.Array, layout: TensorLayout, dtype: np.dtype | type, shape: Sequence[Any] | None, model: str):
    """What one model input gets from one feature column: ``(rows, n)`` from an array column (see :func:`matrix`),
    ``(rows, 1)`` from a scalar one, in `dtype` (the input's declared type). `shape` is the input's declared shape
    (None or symbolic dimensions where unknown); a static width that the arrays do not have fails with a
    :class:`~scoring.errors.ModelError` naming the column and the input."""
    from scoring.errors import ModelError

    if not is_array(column.type):
        return column.to_numpy(zero_copy_only=False).astype(dtype).reshape(-1, 1)
    rank = len(shape) if shape is not None else 2
    if rank != 2 or _is_list(column.type.value_type):
        raise ModelError(
            f"model {model}: input {layout.input!r} takes rank-{rank} tensors, column {layout.column!r} is "
            f"{column.type}; an array column feeds a [rows, n] input",
            hint="export the model with a [batch, n] input for each array column (flatten nested arrays upstream)",
        )
    out = matrix(column, layout, dtype)
    width = shape[1] if shape is not None else None
    if len(column) == 0 and isinstance(width, int) and width > 0:
        return out.reshape(0, width)  # an empty batch has no rows to measure: the input's own width
    if isinstance(width, int) and width > 0 and out.shape[1] != width:
        raise ModelError(
            f"model {model}: input {layout.input!r} takes {width} elements per row, column {layout.column!r} has "
            f"{out.shape[1]}",
            hint=f"give {layout.column} arrays of {width} elements, or set input.tensors.{layout.column}.length: "
            f"{width} to pad or truncate them",
        )
    return out
