"""The ``output:`` section: the Delta table written."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from scoring.config.base import (
    _as_list,
    _Strict,
)


class OutputConfig(_Strict):
    table: str
    """Path (or URI) of the output Delta table, or its name in Spark's catalog (registered on the first run). Created
    on the first run."""
    partition_by: list[str] = []
    """Partition columns (input columns copied to the output). A run replaces exactly the (key, partition) rows it
    selected and keeps every other row; the first run creates the table with this partitioning."""
    on_invalid_predictions: Literal["fail", "quarantine"] = "fail"
    """A prediction that is NaN or infinite: ``fail`` the run naming the row's key (nothing is written), or
    ``quarantine`` the row (it goes to the quarantine table with the reason, and the rest is written)."""

    _listify = field_validator("partition_by", mode="before")(_as_list)
