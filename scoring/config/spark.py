"""The ``spark:`` section: the Spark master and extra settings."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from scoring.config.base import (
    _spark_text,
    _Strict,
)


class SparkConfig(_Strict):
    master: str | None = None
    """Spark master. Default: ``local[*]``, or whatever ``spark-submit`` was given."""
    conf: dict[str, str] = {}
    """Extra Spark settings, e.g. ``spark.driver.memory: 4g``. Numbers and booleans are passed as Spark spells them
    (``8`` as ``"8"``, ``true`` as ``"true"``); other values must be strings."""

    @field_validator("conf", mode="before")
    @classmethod
    def _spark_spelling(cls, value: Any) -> Any:
        return {k: _spark_text(v) for k, v in value.items()} if isinstance(value, dict) else value
