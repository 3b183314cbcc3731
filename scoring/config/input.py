"""The ``input:`` section: the Delta table read, its key and feature columns, and array (tensor) columns."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from scoring.config.base import (
    _INT32_MAX,
    _INT64_MAX,
    _as_list,
    _at_most,
    _Int,
    _Strict,
)


class TensorInputConfig(_Strict):
    """How one array column (embeddings, token ids, a mask) feeds the model; see the README's "Tensor and
    multi-input models"."""

    input: str | None = None
    """The model input this column feeds (default: the input of the column's own name)."""
    length: Annotated[_Int, Field(ge=1), _at_most(_INT32_MAX, "longer than any tensor dimension")] | None = None
    """Pad (with `pad`) or truncate every row's array to this many elements. Absent: every row must have the same
    length, and a batch with rows of different lengths (ragged) fails the run naming the column and the row."""
    pad: float = 0
    """The value shorter arrays are padded with (cast to the input's dtype, e.g. 0 for ids and masks)."""


class InputConfig(_Strict):
    table: str | None = None
    """Path (or URI) of the input Delta table, or its name in Spark's catalog (``db.table``; see
    :mod:`scoring.adapters.catalog`). Required, except for a stream that reads Kafka (``stream.source: kafka``), whose
    rows come from a topic."""
    key: list[str] = Field(min_length=1)
    """Key column(s) that identify a row; copied to the output. A string or a list."""
    features: list[str] | None = None
    """Feature columns, in the order the model takes them. When omitted, taken from the model's MLflow signature."""
    where: str | None = None
    """Optional Spark SQL filter on the input, e.g. ``ds = '2026-11-24'``. Absent or null: every row. An empty or
    blank string is refused (it would mean "every row" by accident); write ``true`` to say so explicitly, e.g.
    ``where: ${FILTER:-true}``."""
    version: Annotated[_Int, _at_most(_INT64_MAX, "Delta versions are 64-bit")] | None = Field(default=None, ge=0)
    """Delta version to read. By default the latest version at the start of the run, which is then recorded."""
    on_invalid_rows: Literal["fail", "skip"] = "fail"
    """Rows with a null or NaN feature: ``fail`` the run (nothing is written), or ``skip`` them (they are counted as
    rejected in the summary, and the rest is scored)."""
    tensors: dict[str, TensorInputConfig] = {}
    """Array feature columns, by column name, that feed a model input of another name or are padded to a fixed
    length, e.g. ``{ids: {input: input_ids, length: 128}}``. An array column not listed feeds the input of its own
    name, and must not be ragged."""

    _listify = field_validator("key", "features", mode="before")(_as_list)

    @field_validator("where")
    @classmethod
    def _a_real_filter(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(
                f"{value!r} is an empty filter; leave input.where out (or --set input.where=null) to score every "
                "row, write a filter such as ds = '2026-11-24', or write true to mean every row explicitly"
            )
        return value
