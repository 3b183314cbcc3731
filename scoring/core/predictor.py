"""The one interface every model runtime implements."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import pyarrow as pa


@runtime_checkable
class Predictor(Protocol):
    """Maps a batch of feature rows to a batch of predictions, row for row.

    `features` holds exactly the model's feature columns, in the model's order, with no nulls or NaN (the caller
    checks). The result must have one row per input row, in the same order, and one column per model output,
    already named for the output table (see :func:`scoring.core.batching.name_outputs`). A predictor is loaded once
    per process and called many times; it must not keep state between calls.
    """

    def predict(self, features: pa.RecordBatch) -> pa.RecordBatch: ...


@runtime_checkable
class PipelinedPredictor(Predictor, Protocol):
    """A predictor that can overlap its work across batches (e.g. a server's requests in flight while the next batch
    is converted). :func:`scoring.core.score.score_batches` hands it the whole stream of a task's batches.

    `predict_stream` gives one prediction batch per input batch, each what :meth:`predict` would give, in input
    order. It pulls the input lazily and holds only a bounded number of batches and requests at a time. An error
    (the input's or its own) is raised at that batch's turn, after every batch before it was given, and nothing
    after it is given. Closing the returned iterator early leaves nothing running.
    """

    def predict_stream(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]: ...
