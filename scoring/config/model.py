"""The ``model:`` section: the MLflow registry model scored with."""

from __future__ import annotations

import re

from pydantic import field_validator

from scoring.config.base import (
    _show,
    _Strict,
)


class ModelConfig(_Strict):
    uri: str
    """MLflow registry URI: ``models:/<name>@<alias>`` or ``models:/<name>/<version>``. Resolved once per run."""
    tracking_uri: str | None = None
    """MLflow tracking URI. Default: ``MLFLOW_TRACKING_URI`` from the environment."""
    registry_uri: str | None = None
    """MLflow registry URI. Default: ``MLFLOW_REGISTRY_URI``, else the tracking URI."""

    @field_validator("uri")
    @classmethod
    def _registry_uri(cls, value: str) -> str:
        if not re.fullmatch(r"models:/[^/@]+(/\d+|@[^/@]+)", value):
            raise ValueError(
                f"{_show(value)} is not a registry model URI; use models:/<name>@<alias> or models:/<name>/<version>"
            )
        return value
