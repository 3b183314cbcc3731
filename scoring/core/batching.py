"""Arrow batches <-> model inputs and outputs, without per-row Python loops; and requests kept in flight across
batches, in order (:func:`in_flight`)."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoring.columns import PREDICTION
from scoring.core import rules, rules_arrow
from scoring.core.rules_arrow import value_rule

BatchT = TypeVar("BatchT")
ContextT = TypeVar("ContextT")
ResultT = TypeVar("ResultT")
OutputT = TypeVar("OutputT")


def feature_matrix(batch: pa.RecordBatch, features: Sequence[str], dtype: np.dtype | type = np.float32) -> np.ndarray:
    """The feature columns of `batch` as one C-contiguous ``(rows, len(features))`` array of `dtype`."""
    out = np.empty((batch.num_rows, len(features)), dtype=dtype)
    for j, name in enumerate(features):
        out[:, j] = batch.column(name).to_numpy(zero_copy_only=False)
    return out


FEATURE_LIMIT = rules.FEATURE_LIMIT
"""The largest feature magnitude accepted (:data:`scoring.core.rules.FEATURE_LIMIT`, float32's largest value)."""


def feature_value_problem(value: object, kind: pa.DataType) -> str | None:
    """Why one feature value is invalid for a model input of Arrow type `kind`, or None when it is valid.

    The rule of :func:`invalid_mask` (:class:`scoring.core.rules.ValueRule`: a number, finite, within
    :data:`FEATURE_LIMIT`), for a value before it is in a batch (a request's JSON value), plus what the input type
    needs of it: an integer, within the integer type's range, for an integer input; ``true``/``false`` for a boolean
    one; a list for an array one. The reason is a phrase for a message: ``"1e+39 is beyond float32's range
    (3.4028235e+38)"``."""
    return value_rule(kind).problem(value)


def invalid_mask(batch: pa.RecordBatch, features: Sequence[str]) -> np.ndarray | None:
    """Boolean mask of rows with a null, NaN, infinite or float32-overflowing value in any feature column (an array
    column: a null array or such an element; :class:`scoring.core.rules.ValueRule`), or None when every row is
    valid."""
    mask = rules_arrow.invalid_mask(batch, rules_arrow.feature_rules(batch.schema, features))
    if not pc.any(mask).as_py():
        return None
    return mask.to_numpy(zero_copy_only=False)


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
        elif (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and _floats_inside(kind):
            from scoring.core.tensors import flat_values  # nested too: multi-dimensional outputs

            flat, parents = flat_values(column)
            bad = np.zeros(len(column), dtype=bool)
            bad[parents[~np.isfinite(flat)]] = True
        else:
            continue
        if bad.any():
            mask = bad if mask is None else (mask | bad)
    return mask


def _floats_inside(kind: pa.DataType) -> bool:
    while pa.types.is_list(kind) or pa.types.is_large_list(kind):
        kind = kind.value_type
    return pa.types.is_floating(kind)


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
    if values.ndim > 2:
        from scoring.core.tensors import nested

        return nested(values)
    raise ValueError(f"model output {name!r} has shape {values.shape}; expected (rows,), (rows, 1) or (rows, k, ...)")


def name_outputs(outputs: Mapping[str, np.ndarray], rows: int) -> pa.RecordBatch:
    """Model outputs as an Arrow batch: a single output becomes ``prediction``; several keep their (cleaned) names.

    ``(rows,)`` and ``(rows, 1)`` outputs become scalar columns, ``(rows, k)`` a list column, ``(rows, a, b, ...)``
    a nested list column.
    """
    if len(outputs) == 1:
        ((name, values),) = outputs.items()
        return pa.RecordBatch.from_arrays([_to_arrow(values, rows, name)], names=[PREDICTION])
    names = [_column_name(n) for n in outputs]
    return pa.RecordBatch.from_arrays([_to_arrow(v, rows, n) for n, v in outputs.items()], names=names)


# -- requests in flight across batches --------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Pending:
    """One batch of :func:`in_flight`'s window: its requests' results as they come back, or the error it failed with."""

    index: int
    context: object = None
    parts: list = dataclasses.field(default_factory=list)
    left: int = 0
    """Requests not collected yet."""
    error: BaseException | None = None
    from_request: bool = False
    """Whether `error` is a request's (named with the batch by `on_error`) rather than the input's own."""


def in_flight(
    batches: Iterable[BatchT],
    split: Callable[[BatchT], tuple[ContextT, Sequence[Callable[[], ResultT]]]],
    join: Callable[[ContextT, list[ResultT]], OutputT],
    submit: Callable[[Callable[[], ResultT]], concurrent.futures.Future],
    max_inflight: int,
    *,
    stop: threading.Event | None = None,
    on_error: Callable[[BaseException, int], BaseException] | None = None,
) -> Iterator[OutputT]:
    """Each batch's requests run concurrently with the next batches' conversion, at most `max_inflight` at a time
    across batches; the outputs come back one per batch, in input order.

    `split` turns a batch into some context and its requests (calls without arguments, run by `submit`, e.g. a
    thread pool's); it runs in the calling thread while earlier requests are in flight. `join` turns the context and
    the requests' results, in order, into the batch's output.

    - Back-pressure: at most `max_inflight` requests are outstanding (submitted and not yet collected), and at most
      `max_inflight` batches (input taken, output not yet given) are held; the input is pulled only as slots free up.
    - Order: a batch is given only after every batch before it. An error (the input's, `split`'s or a request's) is
      raised at its batch's turn, after the batches before it were given; nothing after it is given. A request's
      error goes through ``on_error(error, batch_index)`` (e.g. to name the batch), chained to the original.
    - Failure and early close (the consumer closes the iterator, or it is garbage-collected): `stop` is set (requests
      that retry look at it and give up), requests not started are cancelled, and the ones running are waited for,
      so that nothing is left running when this returns.
    """
    if max_inflight < 1:
        raise ValueError(f"max_inflight must be at least 1, not {max_inflight}")
    stop = stop if stop is not None else threading.Event()
    window: collections.deque[_Pending] = collections.deque()
    requests: collections.deque[tuple[_Pending, int, concurrent.futures.Future]] = collections.deque()

    def collect_oldest() -> None:
        pending, position, future = requests.popleft()
        pending.left -= 1
        try:
            pending.parts[position] = future.result()
        except Exception as e:  # the batch's error, raised at its turn (CancelledError too)
            if pending.error is None:
                pending.error, pending.from_request = e, True
            stop.set()  # later requests need not retry: nothing after this batch will be given

    def ready() -> Iterator[OutputT]:
        while window and (window[0].error is not None or window[0].left == 0):
            head = window.popleft()
            if head.error is not None:
                error = head.error
                if head.from_request and on_error is not None:
                    named = on_error(error, head.index)
                    if named is not error:
                        raise named from error
                raise error
            yield join(head.context, head.parts)

    source = iter(batches)
    exhausted = False
    try:
        for index in itertools.count():
            while requests and (len(window) >= max_inflight or requests[0][2].done()):
                collect_oldest()  # blocks only when the window is full
                yield from ready()
            if stop.is_set():
                break
            pending = _Pending(index)
            try:
                batch = next(source)
            except StopIteration:
                exhausted = True
                break
            except Exception as e:  # the input's own error (e.g. a bad row): raised at its turn
                pending.error = e
                window.append(pending)
                break
            window.append(pending)
            try:
                pending.context, calls = split(batch)
            except Exception as e:
                pending.error = e
                break
            pending.parts, pending.left = [None] * len(calls), len(calls)
            for position, call in enumerate(calls):
                while len(requests) >= max_inflight:
                    collect_oldest()
                    yield from ready()
                if stop.is_set():
                    break
                requests.append((pending, position, submit(call)))
            yield from ready()
        while requests:
            collect_oldest()
            yield from ready()
        yield from ready()
        if window or not exhausted:  # `stop` was set from outside: never end as if every batch had been given
            raise RuntimeError(f"stopped from outside after {index} batch(es); the rest were not given")
    finally:
        stop.set()
        for _, _, future in requests:
            future.cancel()
        concurrent.futures.wait([future for _, _, future in requests])
