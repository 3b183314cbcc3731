"""What one request is answered from and what it is answered with: the :class:`ServingSnapshot` (the index, the model
and the staleness rule, read once), a key's :class:`Lookup`, and an item's :class:`Answer` with its JSON bodies."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa

from scoring.core.index import Hit, Key, PrecomputedIndex, dumps
from scoring.engine.live import LiveResult, LiveScorer, LiveUnavailable
from scoring.engine.model import PreparedModel
from scoring.modes.online.sources import RedisView

JSON = "application/json"


@dataclasses.dataclass(frozen=True)
class Lookup:
    """What the index says about a key: ``hit`` (current), ``stale`` (with why) or ``miss``."""

    outcome: str
    hit: Hit | None = None
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """One model version as the service serves it: the resolved version, its features' types (what a request is
    checked against) and its live scorer (None with ``serve.live: false``). The alias follower keeps one per
    version."""

    prepared: PreparedModel
    types: dict[str, pa.DataType]
    live: LiveScorer | None


@dataclasses.dataclass(frozen=True)
class Answer:
    """One answer: its status, its body (JSON unless `media_type` says otherwise) and headers, and what answered it
    (``precomputed``, ``live`` or ``none``)."""

    status: int
    body: bytes
    headers: Mapping[str, str] | None = None
    source: str = "none"
    media_type: str = JSON


def refusal(status: int, message: str, field: str | None, *, key: Any = None, headers=None) -> Answer:
    """An error answer: ``{"error": message, "field": field, "key": key}`` (the last two when given)."""
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    if key is not None:
        body["key"] = key
    return Answer(status, orjson.dumps(body), headers)


def shown(value: Any) -> str:
    return type(value).__name__ if isinstance(value, dict | list) else repr(value)[:80]


@dataclasses.dataclass(frozen=True)
class ServingSnapshot:
    """What one request is answered from, read once when it starts: the index (one table version, or one Redis
    version), the model (version and live scorer) and the staleness rule with the time it is judged at. A swap of
    the index or a move of the alias while the request runs changes none of it."""

    index: PrecomputedIndex | RedisView | None
    model: ServedModel
    max_age_s: float | None
    now: float
    index_stale: str | None
    """Why every score of this index is stale (its table is gone for longer than ``serve.max_age_s``), or None."""
    serve_stale: bool

    def get_many(self, keys: Sequence[Key]) -> list[Hit | None]:
        index = self.index
        if index is None:
            return [None] * len(keys)
        if isinstance(index, RedisView):
            return index.get_many(keys)
        return [index.get(k) for k in keys]

    def judge(self, hit: Hit | None) -> Lookup:
        """A key's outcome: ``hit`` (current), ``stale`` (with why) or ``miss``."""
        if hit is None:
            return Lookup("miss", reason=None if self.index is not None else "the index is not loaded")
        current = self.model.prepared.version
        if hit.model_version != current:
            return Lookup(
                "stale", hit, f"scored by model version {hit.model_version}; the alias points to {current} now"
            )
        if self.index_stale is not None:
            return Lookup("stale", hit, self.index_stale)
        max_age = self.max_age_s
        if max_age is not None:
            age = self.now - hit.scored_at_us / 1e6
            if age > max_age:
                return Lookup("stale", hit, f"scored {age:.0f} s ago, older than serve.max_age_s ({max_age:g} s)")
        return Lookup("hit", hit)


def precomputed_body(key: Any, lookup: Lookup, *, features_given: bool | None = None) -> bytes:
    """The JSON answer for a precomputed (or stale) score: the stored record with where it came from."""
    assert lookup.hit is not None
    head = {"key": key, "source": "precomputed", "stale": lookup.outcome == "stale"}
    if lookup.outcome == "stale":
        head["stale_reason"] = lookup.reason
    if features_given is not None:
        head["features_used"] = False
    return dumps(head)[:-1] + b"," + lookup.hit.record[1:]


def live_answer(key: Any, prepared: PreparedModel, result: LiveResult, row: int) -> dict[str, Any]:
    return {
        "key": key,
        "source": "live",
        "stale": False,
        "backend": result.backend,
        "fallback": result.fallback,
        "features_used": True,
        "model_name": prepared.name,
        "model_version": prepared.version,
        "model_uri": prepared.uri,
        "scored_at": dt.datetime.fromtimestamp(result.scored_at, dt.UTC).isoformat().replace("+00:00", "Z"),
        "predictions": {name: orjson.Fragment(texts[row]) for name, texts in result.prediction_json.items()},
    }


def describe_live_failure(error: BaseException) -> LiveUnavailable:
    """Any failure of a live future as :class:`LiveUnavailable` (a deadline passing included)."""
    if isinstance(error, LiveUnavailable):
        return error
    if isinstance(error, concurrent.futures.TimeoutError | TimeoutError):
        return LiveUnavailable("live inference missed its deadline", retry_after_s=1.0, kind="deadline")
    return LiveUnavailable(f"live inference failed: {error}", retry_after_s=1.0, kind="error")
