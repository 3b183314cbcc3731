"""One phase timer for every mode: where a run's (or a micro-batch's) seconds go."""

from __future__ import annotations

import time


class PhaseClock:
    """Adds the seconds since the previous :meth:`lap` to ``laps[phase]``.

    A batch run keeps one clock for the run (its ``timings_s``); a stream query hands every micro-batch's clock the
    same `laps` dict, so the phases add up over the query (its summary shows the mean per micro-batch)."""

    def __init__(self, laps: dict[str, float] | None = None, *, digits: int | None = 3) -> None:
        self.started = self._mark = time.perf_counter()
        self.laps: dict[str, float] = {} if laps is None else laps
        self._digits = digits

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        total = self.laps.get(phase, 0.0) + now - self._mark
        self.laps[phase] = total if self._digits is None else round(total, self._digits)
        self._mark = now

    @property
    def elapsed_s(self) -> float:
        return round(time.perf_counter() - self.started, 3)
