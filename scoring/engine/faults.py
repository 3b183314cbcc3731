"""Fault injection for tests: make the driver die at a named point of a run, to prove what a crash leaves behind.

Set ``SCORING_FAULT=<point>`` and the process kills itself (SIGKILL: no clean-up, no ``finally``) when it reaches that
point. Inert unless set. The points, in the order a run reaches them:

- ``before-output-commit``: everything is scored and checked; the output commit is next.
- ``after-output-commit``: the output is committed; the quarantine write is next.
- ``after-quarantine-commit``: both are committed; the run has not reported yet.
"""

from __future__ import annotations

import logging
import os
import signal

_LOGGER = logging.getLogger(__name__)

ENV = "SCORING_FAULT"
POINTS = ("before-output-commit", "after-output-commit", "after-quarantine-commit")


def fault_point(name: str) -> None:
    """Die here when ``$SCORING_FAULT`` names this point."""
    assert name in POINTS, name
    if os.environ.get(ENV) == name:
        _LOGGER.error("%s=%s: killing the driver here (fault injection)", ENV, name)
        os.kill(os.getpid(), signal.SIGKILL)
