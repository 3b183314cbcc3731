"""Kafka fixtures: a real local Kafka broker (Apache Kafka's own, one KRaft node on loopback; see
``scoring/launchers/kafka_broker.py``), one per test session, plus a broker of its own for a test that kills it.

Test modules load these as a plugin, so that every module shares the one broker (a fixture function imported into two
modules would start two)::

    pytest_plugins = ["tests.integration.kafka_fixtures"]

Fixtures:

- ``kafka_broker`` (session): a started `Broker`; use ``kafka_broker.bootstrap``. Stopped by pid at the end of the
  session. Do not stop or kill it in a test: others share it.
- ``kafka_topic`` (function): the name of a fresh topic on ``kafka_broker``, created with one partition.
- ``kafka_topic_factory`` (function): ``make(partitions=1, *, create=True, suffix=None) -> name`` for tests that need
  several topics, more partitions, or a name the test's code creates itself (``create=False``).
- ``fresh_kafka_broker`` (function): a started `Broker` of the test's own, in the test's ``tmp_path``, to stop, kill
  and restart at will; stopped at the end of the test.

The broker's jars are resolved once per machine into ``~/.cache/scoring/kafka-<version>`` (``$SCORING_KAFKA_HOME``),
not into the session's temporary ``SCORING_CACHE_DIR``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from scoring.launchers import kafka_broker as kb

START_TIMEOUT_S = 120.0
"""Generous: a loaded CI machine starts the JVM slowly (about 3 s on an idle one), and the first start resolves the
jars with Maven (about 10 s)."""


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory) -> Iterator[kb.Broker]:
    """One Kafka broker for the whole session."""
    broker = kb.Broker(tmp_path_factory.mktemp("kafka-broker"))
    broker.start(timeout_s=START_TIMEOUT_S)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def fresh_kafka_broker(tmp_path) -> Iterator[kb.Broker]:
    """A Kafka broker of this test's own (its data in ``tmp_path / "kafka"``): stop, kill and restart it freely."""
    broker = kb.Broker(tmp_path / "kafka")
    broker.start(timeout_s=START_TIMEOUT_S)
    try:
        yield broker
    finally:
        broker.stop()


def _topic_base(request: pytest.FixtureRequest) -> str:
    """The test's name as a legal topic name (letters, digits, ``.``, ``_``, ``-``), short enough to add a suffix."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")[:180] or "test"


@pytest.fixture
def kafka_topic_factory(kafka_broker, request) -> Callable[..., str]:
    """``make(partitions=1, *, create=True, suffix=None)``: a new unique topic name on ``kafka_broker``, created
    (and ready: every partition has a leader) unless ``create=False``."""
    base = _topic_base(request)

    def make(partitions: int = 1, *, create: bool = True, suffix: str | None = None) -> str:
        name = f"{base}-{suffix or uuid.uuid4().hex[:8]}"
        if create:
            kb.create_topic(kafka_broker.bootstrap, name, partitions)
        return name

    return make


@pytest.fixture
def kafka_topic(kafka_topic_factory) -> str:
    """A fresh topic on ``kafka_broker`` with one partition, named after the test."""
    return kafka_topic_factory()
