"""scoring: batch scoring on the data lake.

    >>> import scoring
    >>> summary = scoring.run_job("conf/jobs/demo.yaml", ["input.where=ds = '2026-11-01'"])
    >>> summary.model_version, summary.rows_written

The same engine serves ``scoring run`` (CLI), ``spark-submit`` (:mod:`scoring.deploy.spark_submit`) and notebooks.
"""

from __future__ import annotations

from collections.abc import Iterable

from scoring.config import JobConfig, build_job_config, load_job_config
from scoring.engine.record import RunRecord
from scoring.errors import ScoringError
from scoring.modes.batch import RunSummary, plan, run

__all__ = [
    "stream",
    "JobConfig",
    "RunRecord",
    "RunSummary",
    "ScoringError",
    "build_job_config",
    "load_job_config",
    "plan",
    "run",
    "run_job",
]
__version__ = "0.1.0"


def stream(config: JobConfig | str, overrides: Iterable[str] = (), *, spark=None, available_now: bool = False):
    """Start the streaming query of a job config (a :class:`JobConfig`, or the path of a YAML file with ``key=value``
    overrides) and return its running handle (:class:`scoring.modes.stream.StreamHandle`): ``.query`` is Spark's
    StreamingQuery, ``.stop()`` stops after the micro-batch in progress, ``.close()`` returns the summary."""
    from scoring.modes.stream import start

    job = config if isinstance(config, JobConfig) else load_job_config(config, overrides)
    return start(job, spark=spark, available_now=available_now)


def run_job(path: str, overrides: Iterable[str] = (), *, spark=None) -> RunRecord:
    """Load the YAML job config at `path` (with ``key=value`` overrides) and run it."""
    return run(load_job_config(path, overrides), spark=spark)
