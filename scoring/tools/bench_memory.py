"""`scoring bench`'s measurements: the RSS of Spark's Python workers sampled from ``/proc`` while a path runs
(:class:`WorkerMemory`), a path's medians and spread, and the least-squares scaling of time against rows
(:mod:`scoring.tools.bench`)."""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable


def fit_line(rows: list[int], seconds: list[float]) -> tuple[float, float]:
    """The least-squares line ``seconds = fixed_s + per_row_s * rows`` through the points; returns
    ``(fixed_s, per_row_s)``. Needs at least two distinct sizes."""
    if len(set(rows)) < 2 or len(rows) != len(seconds):
        raise ValueError(f"a line needs at least two distinct sizes and a time for each, got {rows} and {seconds}")
    mean_x, mean_y = statistics.fmean(rows), statistics.fmean(seconds)
    sxx = sum((x - mean_x) ** 2 for x in rows)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(rows, seconds, strict=True))
    per_row_s = sxy / sxx
    return mean_y - per_row_s * mean_x, per_row_s


@dataclasses.dataclass(frozen=True)
class WorkerPeak:
    """The Python workers' memory over one sampled window."""

    one_mb: float
    """the largest RSS of any one worker"""
    total_mb: float
    """the largest sum of the workers' RSS at one instant (shared copy-on-write pages are counted in each worker)"""
    workers: int
    """workers that ran (used CPU) in the window"""


_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
_MARKERS = (b"pyspark.daemon", b"pyspark/daemon", b"pyspark.worker", b"pyspark/worker")


def _processes() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, CPU ticks used, RSS in MiB), from /proc/<pid>/stat."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        # after the command: state(0) ppid(1) ... utime(11) stime(12) ... rss(21), in pages
        found[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21]) * _PAGE_MB)
    return found


def _is_pyspark(pid: int, cache: dict[int, bool]) -> bool:
    if pid not in cache:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            cmdline = b""
        cache[pid] = any(m in cmdline for m in _MARKERS)
    return cache[pid]


class WorkerMemory:
    """Samples, from a thread of the driver, the RSS of Spark's Python workers: the processes under `root` (the
    Spark JVM by default) whose command is pyspark's daemon or worker and whose parent is one too (on Linux Spark forks
    each worker from ``pyspark.daemon``). Only workers that used CPU during the window count, so that idle workers
    kept from an earlier job do not. Use as a context manager; read :attr:`peak` afterwards."""

    def __init__(self, root: int | None = None, interval_s: float = 0.1) -> None:
        self.root = root if root is not None else spark_jvm_pid()
        self.interval_s = interval_s
        self.peak = WorkerPeak(0.0, 0.0, 0)
        self._samples: list[dict[int, float]] = []
        self._cpu_first: dict[int, int] = {}
        self._cpu_last: dict[int, int] = {}
        self._cmdline: dict[int, bool] = {}
        self._stop = None
        self._thread = None

    def _workers(self) -> dict[int, tuple[int, float]]:
        procs = _processes()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        below, todo = [], list(children.get(self.root, []))
        while todo:
            pid = todo.pop()
            below.append(pid)
            todo.extend(children.get(pid, []))
        return {
            pid: procs[pid][1:]
            for pid in below
            if _is_pyspark(pid, self._cmdline) and _is_pyspark(procs[pid][0], self._cmdline)
        }

    def wait_until_idle(self, quiet_s: float = 0.2, timeout_s: float = 3.0) -> None:
        """Wait (at most `timeout_s`) until no worker has used CPU, started or exited for `quiet_s`, so that the tail
        of an earlier job (a worker finishing its task, or exiting) is not counted in the next window."""
        deadline = time.monotonic() + timeout_s
        before = {pid: cpu for pid, (cpu, _) in self._workers().items()}
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            now = {pid: cpu for pid, (cpu, _) in self._workers().items()}
            if now == before:
                return
            before = now

    def sample(self) -> None:
        workers = self._workers()
        for pid, (cpu, _) in workers.items():
            # a worker first seen after the first sample was forked in the window: it started from zero
            self._cpu_first.setdefault(pid, cpu if not self._samples else 0)
            self._cpu_last[pid] = cpu
        self._samples.append({pid: rss for pid, (_, rss) in workers.items()})

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> WorkerMemory:
        import threading

        self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        ran = {pid for pid, cpu in self._cpu_last.items() if cpu > self._cpu_first[pid]}
        one = max((rss for s in self._samples for pid, rss in s.items() if pid in ran), default=0.0)
        total = max((sum(rss for pid, rss in s.items() if pid in ran) for s in self._samples), default=0.0)
        self.peak = WorkerPeak(round(one, 1), round(total, 1), len(ran))


def spark_jvm_pid() -> int:
    """The pid of the JVM this driver started (pyspark keeps its Popen), else this process: the workers are below it."""
    from pyspark import SparkContext

    proc = getattr(SparkContext._gateway, "proc", None)
    return proc.pid if proc is not None else os.getpid()


def _measure(fn: Callable[[], None]) -> tuple[float, WorkerPeak]:
    memory = WorkerMemory()
    memory.wait_until_idle()  # not timed: the previous path's workers settle first
    with memory:
        started = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - started
    return elapsed, memory.peak


def _summary(rows: int, runs: list[float], peaks: list[WorkerPeak]) -> dict:
    median = statistics.median(runs)
    return {
        "median_s": round(median, 3),
        "min_s": round(min(runs), 3),
        "max_s": round(max(runs), 3),
        "rows_per_s": round(rows / median),
        "rows_per_s_min": round(rows / max(runs)),
        "rows_per_s_max": round(rows / min(runs)),
        "runs_s": [round(t, 3) for t in runs],
        "workers": {
            "peak_rss_mb_one": max(p.one_mb for p in peaks),
            "peak_rss_mb_total": max(p.total_mb for p in peaks),
            "workers": max(p.workers for p in peaks),
        },
    }


def _scaling(sizes: list[dict]) -> dict:
    """Per path measured at every size: rows/s and the workers' peaks at each size, and the line through the medians."""
    names = [n for n in sizes[0]["paths"] if all(n in s["paths"] for s in sizes)]
    scaling = {}
    for name in names:
        rows = [s["rows"] for s in sizes]
        entry = {
            "rows_per_s": {str(s["rows"]): s["paths"][name]["rows_per_s"] for s in sizes},
            "peak_rss_mb_one": {str(s["rows"]): s["paths"][name]["workers"]["peak_rss_mb_one"] for s in sizes},
            "peak_rss_mb_total": {str(s["rows"]): s["paths"][name]["workers"]["peak_rss_mb_total"] for s in sizes},
        }
        if len(set(rows)) >= 2:
            fixed_s, per_row_s = fit_line(rows, [s["paths"][name]["median_s"] for s in sizes])
            entry |= {
                "fixed_s": round(fixed_s, 3),
                "per_row_us": round(per_row_s * 1e6, 4),
                "marginal_rows_per_s": round(1 / per_row_s) if per_row_s > 0 else None,
            }
        scaling[name] = entry
    return scaling
