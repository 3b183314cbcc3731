"""Progress on long work through one small interface: a rich bar in a terminal, plain log lines elsewhere (Airflow)."""

from __future__ import annotations

import contextlib
import logging
import os
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


def verbose() -> bool:
    """Whether the tools scoring drives may speak for themselves (Spark's JVM and its Ivy resolution, MLflow's
    messages and download bars): yes when the ``scoring`` logger logs at INFO (``scoring -v``, Airflow, spark-submit),
    no otherwise (a plain ``scoring run``, where only their errors show)."""
    return logging.getLogger("scoring").isEnabledFor(logging.INFO)


class HeldOutput:
    """A pipe to give a child process as its stderr (`fd`): what the child writes while it starts is held back, then
    dropped when it started (:meth:`started`) or shown when it did not (:meth:`failed`). Whatever it writes after that
    goes straight through to this process's stderr, errors included."""

    def __init__(self) -> None:
        self._read, self.fd = os.pipe()
        self._held: list[bytes] = []
        self._passing = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="scoring-child-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        broken = False
        while chunk := os.read(self._read, 65536):  # drain always: a child blocked on a full pipe would hang
            with self._lock:
                if not self._passing:
                    self._held.append(chunk)
                    continue
            if not broken:
                broken = not _write_stderr(chunk)
        os.close(self._read)

    def _close_child_end(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def started(self) -> None:
        """The child started: drop what it said while starting, pass through what it says from now on."""
        self._close_child_end()
        with self._lock:
            self._held.clear()
            self._passing = True

    def failed(self, show: bool = True) -> None:
        """The child did not start (it exited): show what it said (when `show`), which is why."""
        if self._passing:  # it had started: what it says now is passed through already
            return
        self._close_child_end()
        self._thread.join(timeout=5)  # the child is gone: its output ends soon
        with self._lock:
            held, self._held, self._passing = b"".join(self._held), [], True
        if show and held:
            _write_stderr(held)


def _write_stderr(data: bytes) -> bool:
    """Write to file descriptor 2 (where a child would have written itself); False once it is gone."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(2, view) :]
    except OSError:
        return False
    return True


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
