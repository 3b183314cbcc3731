"""The one interface every model runtime implements."""

from __future__ import annotations

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
