"""Score a few rows on the driver before the job starts: a model that rejects the inputs fails fast, and the rows it
returns give the output schema every worker must then produce."""

from __future__ import annotations

import pyarrow as pa

from scoring import columns
from scoring.core.score import ScoringSpec, score_batch
from scoring.errors import ModelError

PROBE_ROWS = 16
"""Rows scored on the driver before the job starts."""


def probe(sample: pa.Table, spec: ScoringSpec, predictor_spec) -> pa.Schema:
    """The prediction columns the model returns for `sample` (a few valid input rows). With no row to probe (every
    selected row was set aside), the model is not called and the schema is empty."""
    from scoring.adapters.runtime import cached_predictor

    batch = next((b for b in sample.to_batches() if b.num_rows), None)
    if batch is None:
        return pa.schema([])
    probe_spec = ScoringSpec(spec.features, spec.passthrough, spec.key, spec.model, allow_nonfinite=True)
    out = score_batch(batch, cached_predictor(predictor_spec), probe_spec)
    schema = pa.schema([out.schema.field(n) for n in out.schema.names if n not in spec.passthrough])
    clash = set(schema.names) & {*spec.passthrough, *columns.LINEAGE}
    if clash:
        raise ModelError(
            f"model {spec.model} outputs {sorted(clash)}, which clash with key, partition or lineage columns",
            hint="rename the model's outputs or the input columns",
        )
    return schema
