"""The ``schedule:`` section: the Airflow DAG a job config becomes."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import Field

from scoring.config.base import (
    MAX_RETRIES,
    _at_most,
    _Int,
    _Seconds,
    _Strict,
)


class ScheduleConfig(_Strict):
    """Present in a job config, it turns the job into an Airflow DAG (``dags/`` builds one per config)."""

    cron: str = "@daily"
    """Airflow schedule: a cron expression or a preset such as ``@daily``."""
    start_date: dt.date
    """First data interval."""
    end_date: dt.date | None = None
    """Last data interval (none: open-ended)."""
    catchup: bool = False
    """Whether Airflow schedules the intervals missed since ``start_date``."""
    partition_column: str = "ds"
    """Input (and output) column holding the data interval's date, ``YYYY-MM-DD``: each DAG run scores
    ``<partition_column> = '<data interval start>'``."""
    retries: Annotated[_Int, Field(ge=0), _at_most(MAX_RETRIES, "more retries than that is a typo")] = 2
    """Retries of the scoring task, 0 to 1,000."""
    retry_delay_s: Annotated[_Seconds, Field(ge=0)] = 300.0
    """Delay before the first retry; doubled on each retry (exponential backoff). Finite, at most a year."""
    sensor_poke_interval_s: Annotated[_Seconds, Field(gt=0)] = 60.0
    """How often the input sensor looks for the interval's partition. Finite, at most a year."""
    sensor_timeout_s: Annotated[_Seconds, Field(gt=0)] = 6 * 3600.0
    """How long the input sensor waits before the run fails. Finite, at most a year."""
    deploy: Literal["local", "kubernetes"] = "local"
    """``local``: score with ``SparkSubmitOperator`` (connection ``spark_conn_id``); ``kubernetes``:
    ``SparkKubernetesOperator`` with the manifest the project renders."""
    spark_conn_id: str = "spark_default"
    """Airflow connection of the Spark master for ``deploy: local``."""
    kubernetes_conn_id: str = "kubernetes_default"
    """Airflow connection of the cluster for ``deploy: kubernetes``."""
    namespace: str = "default"
    """Kubernetes namespace for ``deploy: kubernetes``."""
    tags: list[str] = []
    """Extra DAG tags."""
