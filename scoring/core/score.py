"""Score Arrow batches: check the features, call the predictor, check what it returned, keep the pass-through columns."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from scoring.core.batching import nonfinite_mask
from scoring.core.predictor import PipelinedPredictor, Predictor
from scoring.core.tensors import RaggedRows, invalid_mask
from scoring.errors import InputError, InvalidRowsError, ModelError, OutputValidationError, ScoringError


@dataclasses.dataclass(frozen=True)
class ScoringSpec:
    """What to do with each batch: which columns are features, which are copied through, what the model returns."""

    features: tuple[str, ...]
    """Feature columns, in the model's order."""
    passthrough: tuple[str, ...]
    """Columns copied to the output unchanged (keys, then partition columns)."""
    key: tuple[str, ...]
    """Key columns, named in errors about a row."""
    model: str
    """``models:/<name>/<version>``, named in errors."""
    output_schema: pa.Schema | None = None
    """The prediction columns the model must return (None until probed on the driver)."""
    allow_nonfinite: bool = False
    """Whether NaN or infinite predictions pass (to be set aside by the caller) instead of failing the batch."""


def _key_of(batch: pa.RecordBatch, spec: ScoringSpec, row: int) -> str:
    return ", ".join(f"{k}={batch.column(k)[row].as_py()!r}" for k in spec.key if k in batch.schema.names)


def _describe_rows(batch: pa.RecordBatch, spec: ScoringSpec, mask: np.ndarray) -> str:
    row = int(np.flatnonzero(mask)[0])
    bad = [f for f in spec.features if invalid_mask(batch.slice(row, 1), [f]) is not None]
    return (
        f"{int(mask.sum())} row(s) in this batch, first at {_key_of(batch, spec, row)}: "
        f"null, NaN, infinite or out-of-range (beyond float32) value in {', '.join(bad)}"
    )


def check_features(batch: pa.RecordBatch, spec: ScoringSpec, mask: np.ndarray | None) -> None:
    """Raise :class:`InvalidRowsError` naming the first bad row when `mask` flags any row."""
    if mask is not None:
        raise InvalidRowsError(
            f"rows with invalid features: {_describe_rows(batch, spec, mask)}",
            hint="clean the input, filter the rows out with input.where, or set input.on_invalid_rows: skip "
            "to score the rest and count these as rejected",
        )


def check_outputs(outputs: pa.RecordBatch, rows: int, spec: ScoringSpec) -> None:
    """Check what a model returned against the batch it was given, before anything is written."""
    if outputs.num_rows != rows:
        raise OutputValidationError(
            f"model {spec.model} returned {outputs.num_rows} rows for a batch of {rows}",
            hint="the model must return one prediction per input row; check its predict()",
        )
    expected = spec.output_schema
    if expected is not None and not outputs.schema.equals(expected):
        raise OutputValidationError(
            f"model {spec.model} returned columns {outputs.schema.to_string(show_schema_metadata=False)!r} "
            f"but its first batch returned {expected.to_string(show_schema_metadata=False)!r}",
            hint="the model must return the same outputs and dtypes for every batch",
        )


def check_finite(outputs: pa.RecordBatch, batch: pa.RecordBatch, spec: ScoringSpec) -> None:
    """Raise :class:`OutputValidationError` naming the first row whose prediction is NaN or infinite."""
    mask = nonfinite_mask(outputs)
    if mask is not None:
        row = int(np.flatnonzero(mask)[0])
        raise OutputValidationError(
            f"model {spec.model} returned NaN or infinite predictions for {int(mask.sum())} row(s) in a batch, "
            f"first at {_key_of(batch, spec, row)}",
            hint="check the model and those rows' features; or set output.on_invalid_predictions: quarantine to "
            "write the rest and set these rows aside in the quarantine table",
        )


def _features(batch: pa.RecordBatch, spec: ScoringSpec) -> pa.RecordBatch:
    """The batch's feature columns, in the model's order, once they are checked."""
    check_features(batch, spec, invalid_mask(batch, spec.features))
    return batch.select(list(spec.features))


def _empty(batch: pa.RecordBatch, spec: ScoringSpec) -> pa.RecordBatch:
    """The output of an empty batch once the outputs are known: no model call."""
    assert spec.output_schema is not None
    empty = [pa.array([], type=batch.schema.field(c).type) for c in spec.passthrough]
    empty += [pa.array([], type=f.type) for f in spec.output_schema]
    return pa.RecordBatch.from_arrays(empty, names=[*spec.passthrough, *spec.output_schema.names])


def _ragged(error: RaggedRows, batch: pa.RecordBatch, spec: ScoringSpec) -> InputError:
    """Rows of one array column with different lengths, named by the first odd row's key."""
    return InputError(
        f"array column {error.column!r} is ragged: the row at {_key_of(batch, spec, 0)} has {error.first} "
        f"elements, the row at {_key_of(batch, spec, error.row)} has {error.odd} (lengths seen in one batch: "
        f"{list(error.lengths)})",
        hint=f"give every row of {error.column} the same length upstream, or set input.tensors.{error.column}.length "
        "to pad (and truncate) its arrays to one length",
    )


def _model_failed(error: Exception, rows: int, spec: ScoringSpec) -> ModelError:
    """The runtime's own error: keep its text, say which model and batch."""
    return ModelError(
        f"model {spec.model} failed on a batch of {rows} rows: {type(error).__name__}: {error}",
        hint="check that input.features match the model's signature (names, order, dtypes)",
    )


def _assemble(batch: pa.RecordBatch, outputs: pa.RecordBatch, spec: ScoringSpec) -> pa.RecordBatch:
    """Check what the model returned for `batch`, then pass-through columns followed by the prediction columns."""
    check_outputs(outputs, batch.num_rows, spec)
    if not spec.allow_nonfinite:
        check_finite(outputs, batch, spec)
    arrays = [batch.column(c) for c in spec.passthrough] + list(outputs.columns)
    return pa.RecordBatch.from_arrays(arrays, names=[*spec.passthrough, *outputs.schema.names])


def score_batch(batch: pa.RecordBatch, predictor: Predictor, spec: ScoringSpec) -> pa.RecordBatch:
    """One input batch -> one output batch: pass-through columns followed by the prediction columns."""
    if batch.num_rows == 0 and spec.output_schema is not None:
        return _empty(batch, spec)
    features = _features(batch, spec)
    try:
        outputs = predictor.predict(features)
    except ScoringError:
        raise
    except RaggedRows as e:
        raise _ragged(e, batch, spec) from None
    except Exception as e:
        raise _model_failed(e, batch.num_rows, spec) from e
    return _assemble(batch, outputs, spec)


def score_batches(
    batches: Iterable[pa.RecordBatch], predictor: Predictor, spec: ScoringSpec
) -> Iterator[pa.RecordBatch]:
    """Score each batch in turn; empty batches pass through as empty output batches.

    A :class:`~scoring.core.predictor.PipelinedPredictor` gets the whole stream instead, so that it can overlap
    batches (a server computing one while the next is converted): the same checks, the same outputs, in the same
    order; an error is raised at its batch's turn."""
    if not isinstance(predictor, PipelinedPredictor):
        for batch in batches:
            yield score_batch(batch, predictor, spec)
        return
    taken: collections.deque[pa.RecordBatch] = collections.deque()  # batches handed on, output not yet given

    def features() -> Iterator[pa.RecordBatch]:
        for batch in batches:
            taken.append(batch)
            if batch.num_rows == 0 and spec.output_schema is not None:
                continue  # answered here, at its turn, like score_batch does
            yield _features(batch, spec)

    def skipped() -> Iterator[pa.RecordBatch]:  # empty batches at the head: their turn has come
        while taken and taken[0].num_rows == 0 and spec.output_schema is not None:
            yield _empty(taken.popleft(), spec)

    stream = predictor.predict_stream(features())
    try:
        while True:
            try:
                outputs = next(stream)
            except StopIteration:
                break
            except ScoringError:
                raise
            except RaggedRows as e:
                raise _ragged(e, next(b for b in taken if b.num_rows), spec) from None
            except Exception as e:
                raise _model_failed(e, taken[0].num_rows if taken else 0, spec) from e
            yield from skipped()
            yield _assemble(taken.popleft(), outputs, spec)
        yield from skipped()
    finally:  # an early close of this generator closes the predictor's stream: nothing left running
        close = getattr(stream, "close", None)
        if close is not None:
            close()
