"""One alias follower for every mode that keeps scoring while ``model.uri``'s alias may move.

A model URI such as ``models:/churn@champion`` names an alias, which the registry can point at another version at
any time. A long-running consumer (a stream query, the online service) re-resolves it now and then and switches to
the version it points to. :class:`AliasFollower` is that rule, written once:

- it re-resolves at most once per ``interval_s`` (a forced check, e.g. an operator's "check now", ignores the
  interval);
- it keeps **one opened object per version** (what a mode builds for a version: a predictor spec, a live scorer),
  built by the `open` callback the first time the version is met and re-used whenever the alias moves back to it, so
  an alias flipping back and forth opens nothing new;
- it reports a move: :meth:`AliasFollower.check` returns a :class:`Move` (old and new version with what each
  opened) and calls `on_move` with it.

Pure engine code: the resolver and the opener are callbacks (in production ``lambda: prepare_model(config)`` and the
mode's own factory), so this module imports no Spark, no registry client, and is unit-tested with fakes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

_LOGGER = logging.getLogger(__name__)


class Versioned(Protocol):
    """What a resolver returns: anything with the immutable version the alias points to (a
    :class:`~scoring.engine.model.PreparedModel`)."""

    @property
    def version(self) -> str: ...


R = TypeVar("R", bound=Versioned)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Move(Generic[R, T]):
    """The alias moved: from `old_version` (whose opened object was `old`) to `new` (resolved as `resolved`, its
    opened object `opened`, freshly built or re-used)."""

    old_version: str
    new_version: str
    old: T
    opened: T
    resolved: R
    reused: bool
    """Whether `opened` was built before (the alias moved back to a version already met)."""


class AliasFollower(Generic[R, T]):
    """Follows an alias: `resolve` says which version it points to now, `open` builds what a version needs once.

    Call :meth:`start` once (resolves and opens the first version), then :meth:`check` as often as convenient (each
    micro-batch, a background loop): it resolves only when ``interval_s`` has passed since the last resolution.
    Thread-safe: one check resolves at a time; :attr:`current` is read without a lock (a reference swap)."""

    def __init__(
        self,
        resolve: Callable[[], R],
        open: Callable[[R], T],  # noqa: A002 - the callback's natural name
        *,
        interval_s: float,
        on_move: Callable[[Move[R, T]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolve = resolve
        self._open = open
        self.interval_s = interval_s
        self._on_move = on_move
        self._clock = clock
        self._lock = threading.Lock()
        self._opened: dict[str, T] = {}
        self._resolved: dict[str, R] = {}
        self._version: str | None = None
        self._last_check: float | None = None
        self.versions: list[str] = []
        """Every version followed, in order (a version the alias moved back to appears again)."""

    # -- state -----------------------------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._version is not None

    @property
    def version(self) -> str:
        """The version the alias pointed to at the last check."""
        assert self._version is not None, "start() first"
        return self._version

    @property
    def current(self) -> T:
        """What the current version opened."""
        return self._opened[self.version]

    @property
    def resolved(self) -> R:
        """The current version as the resolver returned it."""
        return self._resolved[self.version]

    def opened(self) -> dict[str, T]:
        """Every version's opened object (for closing them all at the end)."""
        return dict(self._opened)

    # -- following -------------------------------------------------------------------------------------------------

    def start(self, resolved: R | None = None) -> T:
        """Resolve (or take `resolved`, already resolved) and open the first version; what it opened."""
        with self._lock:
            first = resolved if resolved is not None else self._resolve()
            self._last_check = self._clock()
            self._adopt(first)
            return self._opened[first.version]

    def check(self, *, force: bool = False) -> Move[R, T] | None:
        """Re-resolve when ``interval_s`` has passed since the last time (or now, with `force`); the move when the
        alias points elsewhere, else None. A resolver's error propagates and leaves the current version in place
        (the next check tries again after the interval)."""
        with self._lock:
            assert self._version is not None, "start() first"
            now = self._clock()
            if not force and self._last_check is not None and now - self._last_check < self.interval_s:
                return None
            self._last_check = now
            resolved = self._resolve()
            old_version = self._version
            if resolved.version == old_version:
                return None
            reused = resolved.version in self._opened
            self._adopt(resolved)
            move = Move(
                old_version=old_version,
                new_version=resolved.version,
                old=self._opened[old_version],
                opened=self._opened[resolved.version],
                resolved=resolved,
                reused=reused,
            )
        _LOGGER.info("alias moved: version %s -> %s%s", old_version, resolved.version, " (re-used)" * reused)
        if self._on_move is not None:
            self._on_move(move)
        return move

    def _adopt(self, resolved: R) -> None:
        version = resolved.version
        if version not in self._opened:
            self._opened[version] = self._open(resolved)  # may raise: nothing changes then
            self._resolved[version] = resolved
        self._version = version
        self.versions.append(version)


__all__ = ["AliasFollower", "Move", "Versioned"]
