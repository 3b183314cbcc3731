"""The whole job config: :class:`JobConfig`, one section per module of this package."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError, model_validator

from scoring.config.base import (
    _Strict,
)
from scoring.config.input import InputConfig
from scoring.config.kubernetes import KubernetesConfig
from scoring.config.model import ModelConfig
from scoring.config.output import OutputConfig
from scoring.config.quality import QualityConfig
from scoring.config.runtime import RuntimeConfig
from scoring.config.schedule import ScheduleConfig
from scoring.config.serve import ServeConfig
from scoring.config.spark import SparkConfig
from scoring.config.stream import StreamConfig


class JobConfig(_Strict):
    name: str = "job"
    """Job name, used in logs and in the commit metadata. Defaults to the config file's stem."""
    run_id: str | None = None
    """Run id to stamp. Default: a new one per run. Give the same id to make a retry of one run idempotent
    (a run id that already committed to the output table commits nothing again)."""
    input: InputConfig
    model: ModelConfig
    runtime: RuntimeConfig = RuntimeConfig()
    output: OutputConfig
    spark: SparkConfig = SparkConfig()
    quality: QualityConfig = QualityConfig()
    schedule: ScheduleConfig | None = None
    """When present, ``dags/`` builds an Airflow DAG for this job."""
    stream: StreamConfig | None = None
    """When present, ``scoring stream`` runs this job as a streaming query (see the README's Streaming section)."""
    serve: ServeConfig | None = None
    """``scoring serve`` settings (see the README's Online serving section). Default: the defaults of each key."""
    kubernetes: KubernetesConfig | None = None
    """``scoring render k8s`` and ``schedule.deploy: kubernetes`` settings (see docs/kubernetes.md). Default: the
    defaults of each key."""

    @model_validator(mode="wrap")
    @classmethod
    def _has_a_source(cls, data: Any, handler: Any) -> JobConfig:
        """``input.table`` is required except for a stream that reads Kafka: reported as a missing key, beside any
        other problem of the document (so a typo such as ``tabel`` shows both the unknown key and the missing one)."""
        stream = data.get("stream") if isinstance(data, dict) else None
        reads_kafka = isinstance(stream, dict) and stream.get("source") == "kafka"
        given = data.get("input") if isinstance(data, dict) else None
        missing = isinstance(given, dict) and given.get("table") is None and not reads_kafka
        if not missing:
            return handler(data)
        problem = {"type": "missing", "loc": ("input", "table"), "input": given}
        try:
            handler(data)
        except ValidationError as e:
            errors = [
                {"type": err["type"], "loc": err["loc"], "input": err.get("input"), "ctx": err.get("ctx", {})}
                if err.get("ctx")
                else {"type": err["type"], "loc": err["loc"], "input": err.get("input")}
                for err in e.errors()
            ]
            raise ValidationError.from_exception_data(e.title, [*errors, problem]) from None
        raise ValidationError.from_exception_data(cls.__name__, [problem])

    @property
    def quarantine_table(self) -> str:
        return self.quality.quarantine_table or f"{self.output.table.rstrip('/')}_quarantine"
