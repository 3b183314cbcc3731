"""Fault injection for tests: make the driver die at a named point of a run, to prove what a crash leaves behind.

Set ``SCORING_FAULT=<point>`` and the process kills itself (SIGKILL: no clean-up, no ``finally``) when it reaches that
point. Inert unless set. The points, in the order a run reaches them:

- ``before-output-commit``: everything is scored and checked; the output commit is next.
- ``after-output-commit``: the output is committed; the quarantine write is next.
- ``after-quarantine-commit``: both are committed; the run has not reported yet.

A stream (``scoring stream``) has the same points for each micro-batch, prefixed ``stream-``:
``stream-before-output-commit``, ``stream-after-output-commit`` (the micro-batch is in the output table, the
checkpoint does not know it yet) and ``stream-after-quarantine-commit``. ``SCORING_FAULT_BATCH=<n>`` picks the
micro-batch (by batch id; default: the first one that reaches the point).

``SCORING_FAULT=kill-python-worker`` with ``SCORING_FAULT_MARKER=<path>`` kills the first Spark Python worker that
scores a batch (the one that creates the marker file), once: Spark must retry the task, as a cluster would.
"""

from __future__ import annotations

import logging
import os
import signal

_LOGGER = logging.getLogger(__name__)

ENV = "SCORING_FAULT"
POINTS = ("before-output-commit", "after-output-commit", "after-quarantine-commit")
STREAM_POINTS = tuple(f"stream-{p}" for p in POINTS)
BATCH_ENV = "SCORING_FAULT_BATCH"
WORKER_POINT = "kill-python-worker"
MARKER_ENV = "SCORING_FAULT_MARKER"


def fault_point(name: str, *, batch: int | None = None) -> None:
    """Die here when ``$SCORING_FAULT`` names this point (and ``$SCORING_FAULT_BATCH``, when set, names `batch`)."""
    assert name in POINTS or name in STREAM_POINTS, name
    wanted = os.environ.get(BATCH_ENV)
    if wanted is not None and batch is not None and str(batch) != wanted.strip():
        return
    if os.environ.get(ENV) == name:
        _LOGGER.error("%s=%s: killing the driver here (fault injection)", ENV, name)
        os.kill(os.getpid(), signal.SIGKILL)


from scoring.adapters.spark import worker_fault_point  # noqa: E402, F401 - runs in Spark's Python workers
