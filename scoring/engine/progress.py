"""Progress on long work through one small interface: a rich bar in a terminal, plain log lines elsewhere (Airflow)."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Protocol

_LOGGER = logging.getLogger(__name__)


class Reporter(Protocol):
    """Receives what a run is doing: a named step, and task counts while Spark works."""

    def step(self, message: str) -> None: ...

    def tasks(self, label: str, done: int, total: int) -> None: ...

    def close(self) -> None: ...


class LogReporter:
    """Log lines, throttled to one progress line every `every_s` seconds."""

    def __init__(self, every_s: float = 10.0) -> None:
        self._every_s = every_s
        self._last = 0.0

    def step(self, message: str) -> None:
        _LOGGER.info("%s", message)

    def tasks(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= self._every_s or done == total:
            self._last = now
            _LOGGER.info("%s: %d/%d tasks", label, done, total)

    def close(self) -> None:
        pass


class RichReporter:
    """A live progress bar for terminals."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._console = Console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self._console,
            transient=True,
        )
        self._task = None
        self._progress.start()

    def step(self, message: str) -> None:
        self._console.print(f"[dim]-[/dim] {message}")

    def tasks(self, label: str, done: int, total: int) -> None:
        if self._task is None:
            self._task = self._progress.add_task(label, total=total)
        self._progress.update(self._task, description=label, completed=done, total=total)

    def close(self) -> None:
        self._progress.stop()


def default_reporter() -> Reporter:
    return RichReporter() if sys.stderr.isatty() else LogReporter()


from scoring.adapters.spark import HeldOutput, verbose  # noqa: E402, F401 - defined where Spark starts, named here too


@contextlib.contextmanager
def watch_spark(spark, reporter: Reporter, label: str, every_s: float = 0.5) -> Iterator[None]:
    """Report the task counts of Spark's active stages while the body runs."""
    tracker = spark.sparkContext.statusTracker()
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every_s):
            try:
                infos = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
            except Exception:  # the JVM may be going away at the end of a run
                return
            infos = [i for i in infos if i is not None]
            if infos:
                reporter.tasks(label, sum(i.numCompletedTasks for i in infos), sum(i.numTasks for i in infos))

    thread = threading.Thread(target=poll, name="scoring-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
