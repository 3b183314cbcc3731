"""One predictor per runtime spec per process, whatever the runtime.

A spec is a frozen, hashable dataclass with a ``create()`` method that returns a
:class:`~scoring.core.predictor.Predictor`. A reused Spark Python worker creates each predictor once (loads the model,
opens the server connection) and reuses it for every batch of every task.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from scoring.core.predictor import Predictor

_LOGGER = logging.getLogger(__name__)


class RuntimeSpec(Protocol):
    """Everything a worker needs to build a predictor; hashable."""

    model_uri: str

    def create(self) -> Predictor: ...


_CACHE: dict[RuntimeSpec, Predictor] = {}
_LOCK = threading.Lock()


def cached_predictor(spec: RuntimeSpec) -> Predictor:
    with _LOCK:
        predictor = _CACHE.get(spec)
        if predictor is None:
            _LOGGER.info("creating a %s predictor for %s", type(spec).__name__, spec.model_uri)
            predictor = _CACHE[spec] = spec.create()
        return predictor


def forget(spec: RuntimeSpec) -> None:
    """Drop a cached predictor (closing it if it can be closed), e.g. after its server went away."""
    with _LOCK:
        predictor = _CACHE.pop(spec, None)
    close = getattr(predictor, "close", None)
    if close is not None:
        close()


def forget_all() -> None:
    """Drop every cached predictor in this process."""
    for spec in list(_CACHE):
        forget(spec)
