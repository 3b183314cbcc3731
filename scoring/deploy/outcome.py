"""How a try of a scheduled run ended, as a scheduler sees it, and whether trying again can help: the exit code
(:mod:`scoring.errors`), the error record the job left, and, on Kubernetes, what the driver pod and the
SparkApplication's status say. Shared by :mod:`scoring.deploy.kubernetes` (the manifests, the driver's outcome) and
:mod:`scoring.deploy.scheduling` (the Airflow side), which both import it; it imports neither.

How a failed driver reaches Airflow on Kubernetes: the driver container (``spark-kubernetes-driver``) runs
spark-submit in client mode, which exits with :mod:`scoring.deploy.spark_submit`'s status (75 transient, 1 terminal,
2 config), and spark_submit writes its error record to the container's termination message file
(:data:`TERMINATION_LOG`). Kubernetes keeps both in the pod's status (``state.terminated.exitCode`` / ``.message``);
spark-operator copies the exit code into the SparkApplication's ``status.applicationState.errorMessage`` ("driver
container failed with ExitCode: 75, Reason: Error"). :func:`driver_outcome` reads them back, so that the DAG's
operator retries a transient failure only.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from scoring.errors import EXIT_TRANSIENT

DRIVER_CONTAINER = "spark-kubernetes-driver"
"""The driver pod's container that Spark (and spark-operator) name, running spark-submit in client mode."""
TERMINATION_LOG = "/dev/termination-log"
"""Kubernetes' default ``terminationMessagePath``: what a container writes there becomes its termination message."""
TERMINATION_LOG_ENV = "SCORING_TERMINATION_LOG"
"""Overrides :data:`TERMINATION_LOG` (a pod with another ``terminationMessagePath``)."""
TERMINATION_MESSAGE_MAX_BYTES = 4096
"""Kubernetes keeps at most this much of a termination message."""


def retry_can_help(exit_code: int | None) -> bool:
    """Whether Airflow should retry a failed ``score`` try, by the job's exit code (:mod:`scoring.errors`).

    75 (transient: a server did not answer, a concurrent writer won the commit): yes. Any other exit code (1 terminal,
    2 config): no, the same run fails the same way. None or negative (the job never exited on its own: spark-submit
    did not start, was killed by a signal, the driver pod was evicted or lost): yes, nothing decided it would fail.
    """
    return exit_code is None or exit_code < 0 or exit_code == EXIT_TRANSIENT


@dataclasses.dataclass(frozen=True)
class ScoreFailure:
    """A failed try of ``score``: the job's exit code and the error record it left (if it got that far)."""

    exit_code: int | None
    error: Mapping[str, Any] | None
    """The ``error`` part of the job's error record: type, message, hint, transient, exit_code."""

    @property
    def retry(self) -> bool:
        return retry_can_help(self.exit_code)

    def record(self) -> dict[str, Any]:
        """The error record for XCom (what the gate report tasks read), with the exit code Airflow saw."""
        error = dict(self.error or {"type": None, "message": None, "hint": None})
        return {"error": {**error, "exit_code": self.exit_code, "transient": self.retry}}

    def message(self) -> str:
        if self.error:
            what = f"{self.error.get('type')}: {self.error.get('message')}"
            if self.error.get("hint"):
                what += f"\n  how to fix: {self.error['hint']}"
        else:
            what = "the job left no error record (see its output above)"
        if self.exit_code is None:
            code = "the job did not exit on its own"
        elif self.exit_code < 0:
            code = f"the job was killed by signal {-self.exit_code}"
        else:
            code = f"exit code {self.exit_code}"
        verdict = (
            "transient: Airflow retries it, with the same scoring run id"
            if self.retry
            else "not transient: no retry, a retry would fail the same way"
        )
        return f"scoring failed ({code}, {verdict}): {what}"


def score_failure(exit_code: int | None, record: Mapping[str, Any] | None) -> ScoreFailure:
    """The failure of a ``score`` try from the job's exit code and what it left (its error record, or anything
    else, e.g. nothing). When the exit code is unknown (the operator could not tell), the record's is used: the job
    wrote it this try (the file is cleared before each try)."""
    error = record.get("error") if isinstance(record, Mapping) else None
    error = error if isinstance(error, Mapping) else None
    if exit_code is None and error is not None and isinstance(error.get("exit_code"), int):
        exit_code = int(error["exit_code"])
    return ScoreFailure(exit_code, error)


def termination_message(record: Mapping[str, Any]) -> str:
    """`record` (``{"error": {...}}``) as compact JSON that fits a termination message: the message and the hint
    are shortened when it would not."""
    error = dict(record.get("error") or {})
    text = json.dumps({"error": error}, separators=(",", ":"), default=str)
    for field in ("hint", "message"):
        while len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES and len(str(error.get(field) or "")) > 20:
            over = len(text.encode()) - TERMINATION_MESSAGE_MAX_BYTES
            value = str(error[field])
            error[field] = value[: max(16, len(value) - over - 8)] + "..."
            text = json.dumps({"error": error}, separators=(",", ":"), default=str)
    return text


@dataclasses.dataclass(frozen=True)
class DriverOutcome:
    """How the driver of a SparkApplication ended, as far as the pod and the application status tell."""

    exit_code: int | None
    """The driver container's exit code; None when the driver never exited on its own (evicted, deleted, lost
    node, submission failed): then nothing ran to completion and a retry may help."""
    record: dict[str, Any] | None
    """The error record spark_entry left in the termination message (``{"error": {...}}``), when there is one."""
    source: str
    """Where the exit code came from, for the task log."""

    @property
    def retry_can_help(self) -> bool:
        return retry_can_help(self.exit_code)

    def describe(self) -> str:
        error = (self.record or {}).get("error") or {}
        what = f"{error.get('type')}: {error.get('message')}" if error else "no error record"
        hint = f"\n  how to fix: {error['hint']}" if error.get("hint") else ""
        code = "no exit code" if self.exit_code is None else f"exit code {self.exit_code}"
        return f"the Spark driver failed ({code}, from {self.source}): {what}{hint}"


_EXIT_CODE = re.compile(r"ExitCode:\s*(-?\d+)")


def _driver_state(pod: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    status = next((s for s in statuses if s.get("name") == DRIVER_CONTAINER), statuses[0] if statuses else None)
    if status is None:
        return None
    return (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")


def error_record_from_message(message: str | None) -> dict[str, Any] | None:
    """The error record in a termination message, or None when the message is not one."""
    try:
        record = json.loads(message or "")
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("error"), dict) else None


def driver_outcome(pod: Mapping[str, Any] | None = None, application: Mapping[str, Any] | None = None) -> DriverOutcome:
    """Read how the driver ended from what the operator sees: the driver pod (its JSON dict, camelCase keys;
    :func:`scoring.deploy.kubernetes.driver_outcome` takes a ``V1Pod`` too) and the SparkApplication object (its JSON
    dict, as the custom-objects API returns it).

    The exit code comes from the driver container's terminated state; without one (the pod is gone), from the
    application's ``errorMessage`` ("driver container failed with ExitCode: N, ..."); else from the error record.
    """
    terminated = _driver_state(pod)
    record = error_record_from_message((terminated or {}).get("message"))
    if terminated is not None and terminated.get("exitCode") is not None:
        return DriverOutcome(int(terminated["exitCode"]), record, f"container {DRIVER_CONTAINER}")
    state = ((application or {}).get("status") or {}).get("applicationState") or {}
    found = _EXIT_CODE.search(str(state.get("errorMessage") or ""))
    if found:
        return DriverOutcome(int(found.group(1)), record, f"SparkApplication state {state.get('state')}")
    if record is not None and isinstance(record["error"].get("exit_code"), int):
        return DriverOutcome(int(record["error"]["exit_code"]), record, "the termination message")
    source = f"SparkApplication state {state.get('state')}: {state.get('errorMessage')}" if state else "nothing"
    return DriverOutcome(None, record, source)
