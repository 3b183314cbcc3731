"""Online mode: precomputed scores from memory (or Redis), live inference as the fallback, version-aware.

The third way the same model is consumed. :class:`OnlineService` holds no HTTP: it answers lookups and live
requests, and the HTTP routes (``scoring.modes.http_api``) only translate. Its parts:

- **the model**, resolved from ``model.uri`` at start (as batch and streaming do) and re-resolved every
  ``serve.alias_check_interval_s``: when the alias moves, live inference switches to the new version, and every
  precomputed score made by another version becomes **stale**;
- **the precomputed index**: the batch output table (``serve.table``, default ``output.table``) read with delta-rs
  (no Spark) into a :class:`~scoring.core.index.PrecomputedIndex`, rebuilt in a background thread when the table
  gets a new version and swapped in whole (a request holds the index it started with); or, with
  ``serve.index: redis``, what ``scoring publish-online`` loaded, read per request;
- **live inference**: a :class:`~scoring.engine.live.LiveScorer` over the shared predictor (Triton or embedded, from
  ``runtime``), micro-batched, with deadlines and a circuit breaker.

A precomputed score is **current** when its model version is the version the alias points to now and it is younger
than ``serve.max_age_s`` (when set); otherwise it is stale: a request with features is scored live instead; without
features, or with live down, the stale score is served marked ``stale: true`` only when ``serve.serve_stale`` allows.

The package's parts: :mod:`~scoring.modes.online.service` (the :class:`OnlineService`: model, index, snapshots),
:mod:`~scoring.modes.online.answers` (the answer policy, one snapshot per request),
:mod:`~scoring.modes.online.snapshot` (what a request is answered from and with),
:mod:`~scoring.modes.online.sources` (the Delta and Redis indexes) and :mod:`~scoring.modes.online.publish`
(``scoring publish-online``). The model alias is followed by :class:`scoring.engine.follow.AliasFollower`.
"""

from __future__ import annotations

from scoring.modes.online.answers import Answerer
from scoring.modes.online.publish import publish
from scoring.modes.online.service import OnlineService
from scoring.modes.online.snapshot import (
    Answer,
    Lookup,
    ServedModel,
    ServingSnapshot,
    describe_live_failure,
    live_answer,
    precomputed_body,
)
from scoring.modes.online.sources import REDIS_KEY_SEPARATOR, RedisIndex, RedisView, build_index, redis_key

__all__ = [
    "REDIS_KEY_SEPARATOR",
    "Answer",
    "Answerer",
    "Lookup",
    "OnlineService",
    "RedisIndex",
    "RedisView",
    "ServedModel",
    "ServingSnapshot",
    "build_index",
    "describe_live_failure",
    "live_answer",
    "precomputed_body",
    "publish",
    "redis_key",
]
