"""Lineage stamps: which model, which input snapshot, which run produced each row."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pyarrow as pa

from scoring import columns


@dataclasses.dataclass(frozen=True)
class Lineage:
    """The values stamped on every row of one run (see :mod:`scoring.columns` for their meaning)."""

    model_name: str
    model_version: str
    model_uri: str
    input_version: int | None
    """The input snapshot's Delta version; None where rows come from no snapshot (an online request)."""
    scoring_run_id: str
    scored_at: dt.datetime

    def values(self) -> dict[str, Any]:
        """Column name -> value, in output order."""
        return {
            columns.MODEL_NAME: self.model_name,
            columns.MODEL_VERSION: self.model_version,
            columns.MODEL_URI: self.model_uri,
            columns.INPUT_VERSION: self.input_version,
            columns.SCORING_RUN_ID: self.scoring_run_id,
            columns.SCORED_AT: self.scored_at,
        }

    def as_json_dict(self) -> dict[str, Any]:
        """The same values, JSON-ready (for the Delta commit's ``userMetadata`` and the run summary)."""
        out = self.values()
        out[columns.SCORED_AT] = self.scored_at.isoformat()
        return out


LINEAGE_SCHEMA = pa.schema(
    [
        (columns.MODEL_NAME, pa.string()),
        (columns.MODEL_VERSION, pa.string()),
        (columns.MODEL_URI, pa.string()),
        (columns.INPUT_VERSION, pa.int64()),
        (columns.SCORING_RUN_ID, pa.string()),
        (columns.SCORED_AT, pa.timestamp("us", tz="UTC")),
    ]
)
"""Arrow types of the lineage columns."""


def lineage_columns(lineage: Lineage) -> list[tuple[pa.Field, Any]]:
    """The lineage columns as (Arrow field, constant value) pairs, in output order: the one definition every stamp
    uses (:func:`stamp_batch` for Arrow batches, :func:`scoring.adapters.spark.stamp_dataframe` for Spark)."""
    values = lineage.values()
    return [(field, values[field.name]) for field in LINEAGE_SCHEMA]


def stamp_batch(batch: pa.RecordBatch, lineage: Lineage) -> pa.RecordBatch:
    """`batch` with the lineage columns appended (constant per run)."""
    arrays = list(batch.columns)
    names = list(batch.schema.names)
    for field, value in lineage_columns(lineage):
        arrays.append(pa.repeat(pa.scalar(value, type=field.type), batch.num_rows))
        names.append(field.name)
    return pa.RecordBatch.from_arrays(arrays, names=names)
