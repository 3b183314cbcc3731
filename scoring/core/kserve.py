"""The KServe v2 / Open Inference Protocol inference request and response, as ``scoring serve`` speaks it.

Inputs, either:

- one 2-D tensor ``[rows, n_features]`` (any name, e.g. the one Triton's exported model takes), its columns in the
  model's feature order; or
- one tensor per feature, named after the feature, each ``[rows]`` or ``[rows, 1]``.

Data come as JSON (flat or nested, row-major) or, with the binary tensor extension, as raw little-endian bytes after
the JSON header (``Inference-Header-Content-Length`` gives its length; each binary input says its
``binary_data_size``). Outputs are the model's prediction columns: a scalar column is ``[rows, 1]`` and a list
column ``[rows, k]``, the shapes the Triton sidecar gives the same model (``scoring export`` declares a one-value
output as dims ``[1]``), so a client written against the sidecar reads ours unchanged; each is returned as JSON data, or as binary when the request asks (``binary_data`` on the requested
output, or ``binary_data_output`` in the request's parameters), as ``tritonclient.http`` does by default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from scoring.core.index import loads
from scoring.errors import ScoringError, Terminal

_DTYPES = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class ProtocolError(ScoringError, Terminal, ValueError):
    """A malformed inference request; the message names the input or field (a 400 or 422). A
    :class:`~scoring.errors.ScoringError` (and still a ``ValueError``, for callers that catch that)."""

    def __init__(self, message: str, *, status: int = 400, field: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.field = field
        """The input, header or field at fault (None: the inputs as a whole)."""

    def __reduce__(self):  # keep `status` and `field` across pickling
        return (_rebuild, (type(self), self.message, self.status, self.field, self.hint))


def _rebuild(cls: type[ProtocolError], message: str, status: int, field: str | None, hint: str | None):
    return cls(message, status=status, field=field, hint=hint)


@dataclasses.dataclass(frozen=True)
class InferRequest:
    id: str | None
    features: pa.RecordBatch
    binary_outputs: frozenset[str] | bool
    """Which outputs to return as binary: a set of names, or True/False for all."""
    requested: tuple[str, ...] | None
    """Output names asked for (None: all)."""


_MAX_VALUES = 2**31 - 1
"""The most values one input tensor may declare (a shape whose product is larger is refused before any data is
read: no request body holds that many)."""


def _parameters(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be an object", field="parameters")
    return value


def _split(body: bytes, header_length: int | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        head, rest = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length is {header_length}, but the body has {len(body)} bytes",
                field="Inference-Header-Content-Length",
            )
        head, rest = body[:header_length], body[header_length:]
    try:
        request = loads(head)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"the request is not valid JSON: {e}", field="body") from None
    if not isinstance(request, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list", field="body")
    return request, rest


def _tensor(spec: Any, i: int, binary: memoryview, at: int) -> tuple[str, np.ndarray, int]:
    try:
        return _read_tensor(spec, i, binary, at)
    except ProtocolError as e:
        if e.field is None:
            name = spec.get("name") if isinstance(spec, dict) else None
            e.field = name if isinstance(name, str) else f"inputs[{i}]"
        raise


def _read_tensor(spec: Any, i: int, binary: memoryview, at: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(spec, dict):
        raise ProtocolError(f"inputs[{i}] must be an object with name, shape, datatype and data")
    name = spec.get("name")
    shape = spec.get("shape")
    datatype = spec.get("datatype")
    where = f"inputs[{i}] ({name!r})" if isinstance(name, str) else f"inputs[{i}]"
    if not isinstance(name, str):
        raise ProtocolError(f"{where}: 'name' must be a string")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"{where}: 'shape' must be a list of non-negative integers")
    if not isinstance(datatype, str) or datatype not in _DTYPES:
        raise ProtocolError(f"{where}: datatype {datatype!r} is not supported (use FP32, FP64, INT32 or INT64)")
    dtype = np.dtype(_DTYPES[datatype])
    count = math.prod(shape)  # exact (Python integers): a product beyond any body is refused below, never wraps
    if count > _MAX_VALUES:
        raise ProtocolError(
            f"{where}: shape {shape} holds {count} values; at most {_MAX_VALUES} are accepted", status=413
        )
    size = _parameters(spec.get("parameters"), f"{where}: 'parameters'").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize or at + size > len(binary):
            raise ProtocolError(
                f"{where}: binary_data_size {size!r} does not match shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes) or the bytes sent"
            )
        values = np.frombuffer(binary[at : at + size], dtype=dtype.newbyteorder("<")).astype(dtype)
        return name, values.reshape(shape), at + size
    if "data" not in spec:
        raise ProtocolError(f"{where}: 'data' is missing (or send it binary with parameters.binary_data_size)")
    try:
        values = np.asarray(spec["data"])
    except ValueError:
        raise ProtocolError(f"{where}: 'data' is not a rectangular list of numbers") from None
    if values.dtype.kind not in "biuf" or values.size != count:
        raise ProtocolError(
            f"{where}: 'data' must hold {count} numbers for shape {shape}, got {values.size} "
            f"{'value(s)' if values.dtype.kind in 'biuf' else 'non-numeric value(s)'}",
            status=422,
        )
    if dtype.kind in "iu" and values.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
        raise ProtocolError(f"{where}: datatype {datatype} but 'data' holds non-integers", status=422)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        outside = (values < info.min) | (values > info.max)
    else:
        finite = np.isfinite(values) if values.dtype.kind == "f" else np.ones(values.shape, bool)
        outside = finite & (np.abs(values.astype(np.float64)) > np.finfo(dtype).max)
    if outside.any():
        raise ProtocolError(
            f"{where}: {values.flat[int(np.flatnonzero(outside)[0])]!r} is beyond the range of {datatype}", status=422
        )
    return name, values.astype(dtype).reshape(shape), at


def parse_request(
    body: bytes,
    *,
    header_length: int | None,
    features: Sequence[str],
    types: Mapping[str, pa.DataType],
) -> InferRequest:
    """An inference request as a batch of feature rows in the model's order; :class:`ProtocolError` names what is
    wrong."""
    request, rest = _split(body, header_length)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    binary = memoryview(rest)
    at = 0
    tensors: list[tuple[str, np.ndarray]] = []
    for i, spec in enumerate(inputs):
        name, values, at = _tensor(spec, i, binary, at)
        tensors.append((name, values))
    names = list(features)
    if len(tensors) == 1 and tensors[0][1].ndim == 2 and tensors[0][0] not in names:
        name, matrix = tensors[0]
        if matrix.shape[1] != len(names):
            raise ProtocolError(
                f"input {name!r} has {matrix.shape[1]} columns; the model takes {len(names)} features "
                f"({', '.join(names)})",
                status=422,
            )
        columns = {f: matrix[:, j] for j, f in enumerate(names)}
    else:
        given = {n: v for n, v in tensors}
        missing = [f for f in names if f not in given]
        extra = [n for n in given if n not in names]
        if missing or extra:
            raise ProtocolError(
                "inputs must be one [rows, features] tensor or one tensor per feature: "
                + (f"missing {', '.join(missing)}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unknown {', '.join(extra)}" if extra else ""),
                status=422,
            )
        columns = {}
        for f in names:
            values = given[f]
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.ndim != 1:
                raise ProtocolError(
                    f"input {f!r} must be [rows] or [rows, 1], got shape {list(values.shape)}", status=422
                )
            columns[f] = values
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ProtocolError(f"the feature inputs have different numbers of rows: {sorted(lengths)}", status=422)
    arrays = []
    for f in names:
        values = columns[f]
        if values.dtype.kind == "f":
            bad = ~np.isfinite(values)
            if bad.any():
                raise ProtocolError(
                    f"feature {f!r}: row {int(np.flatnonzero(bad)[0])} is {values[bad][0]!r}, not a finite number",
                    status=422,
                    field=f,
                )
        try:
            arrays.append(pa.array(values).cast(types[f]))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ProtocolError(f"feature {f!r}: {e}", status=422, field=f) from None
    outputs = request.get("outputs")
    params = _parameters(request.get("parameters"), "'parameters'")
    requested: tuple[str, ...] | None = None
    binary_outputs: frozenset[str] | bool = bool(params.get("binary_data_output", False))
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise ProtocolError("'outputs' must be a list of objects with a name", field="outputs")
        requested = tuple(o["name"] for o in outputs)
        binary_outputs = frozenset(
            o["name"]
            for o in outputs
            if _parameters(o.get("parameters"), f"outputs ({o['name']!r}): 'parameters'").get(
                "binary_data", binary_outputs is True
            )
        )
    request_id = request.get("id")
    return InferRequest(
        None if request_id is None else str(request_id),
        pa.RecordBatch.from_arrays(arrays, names=names),
        binary_outputs,
        requested,
    )


def _as_numpy(column: pa.Array) -> np.ndarray:
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type):
        rows = len(column)
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(rows, -1) if rows else flat.reshape(0, 0)
    return column.to_numpy(zero_copy_only=False).reshape(-1, 1)


def encode_response(
    predictions: pa.RecordBatch,
    *,
    model_name: str,
    model_version: str,
    request: InferRequest,
    parameters: Mapping[str, Any],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it (else None)."""
    names = list(predictions.schema.names)
    if request.requested is not None:
        unknown = [n for n in request.requested if n not in names]
        if unknown:
            raise ProtocolError(
                f"unknown output(s) {', '.join(unknown)}; the model returns {', '.join(names)}",
                status=400,
                field="outputs",
            )
        names = list(request.requested)
    outputs = []
    blobs = []
    for name in names:
        values = _as_numpy(predictions.column(name))
        datatype = _NAMES.get(values.dtype)
        if datatype is None:
            values = values.astype(np.float64) if values.dtype.kind in "fiub" else values
            datatype = _NAMES.get(values.dtype, "BYTES")
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(values.shape)}
        binary = request.binary_outputs is True or (
            isinstance(request.binary_outputs, frozenset) and name in request.binary_outputs
        )
        if binary and datatype != "BYTES":
            data = np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = values.reshape(-1).tolist()
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    body["parameters"] = dict(parameters)
    head = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
