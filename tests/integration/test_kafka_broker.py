"""The local Kafka broker: Apache Kafka's own broker (one KRaft node on loopback, a plain ``java`` process) and the
confluent-kafka helpers that feed and read it. No mocks: a real broker, real clients, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from scoring.errors import BackendUnavailableError, ScoringError, is_transient
from scoring.launchers import kafka_broker as kb

pytest_plugins = ["tests.integration.kafka_fixtures"]  # kafka_broker, kafka_topic, fresh_kafka_broker

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_764_000_000_000  # a fixed epoch-ms timestamp: the records must come back with exactly the ones given


def _records(n: int, start: int = 0) -> list[tuple[str, str, int]]:
    return [(f"key-{i}", f"value-{i}", T0 + i) for i in range(start, start + n)]


def _triples(consumed: list[kb.ConsumedRecord]) -> list[tuple[bytes | None, bytes | None, int]]:
    return [(r.key, r.value, r.timestamp_ms) for r in consumed]


def _encoded(records: list[tuple[str, str, int]]) -> list[tuple[bytes, bytes, int]]:
    return [(k.encode(), v.encode(), ts) for k, v, ts in records]


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    """True once `pid` no longer runs (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


# --- one shared broker ------------------------------------------------------------------------------------------------


def test_produced_records_come_back_with_their_keys_values_and_timestamps(kafka_broker, kafka_topic):
    sent = _records(500)
    sent_mixed = [(k.encode() if i % 2 else k, v, ts) for i, (k, v, ts) in enumerate(sent)]  # bytes and str alike

    assert kb.produce(kafka_broker.bootstrap, kafka_topic, sent_mixed) == 500
    got = kb.consume_all(kafka_broker.bootstrap, kafka_topic, expect=500)

    assert _triples(got) == _encoded(sent)
    assert [(r.partition, r.offset) for r in got] == [(0, i) for i in range(500)]
    # Read again to the end, without a count: nothing more, nothing less (a fresh reader each time).
    assert _triples(kb.consume_all(kafka_broker.bootstrap, kafka_topic)) == _encoded(sent)


def test_a_record_without_key_or_timestamp_gets_the_broker_time(kafka_broker, kafka_topic):
    before_ms = int(time.time() * 1000)
    kb.produce(kafka_broker.bootstrap, kafka_topic, [(None, b"no key"), (None, "no time either", None)])

    got = kb.consume_all(kafka_broker.bootstrap, kafka_topic, expect=2)

    assert [(r.key, r.value) for r in got] == [(None, b"no key"), (None, b"no time either")]
    assert all(before_ms - 1000 <= r.timestamp_ms <= int(time.time() * 1000) + 1000 for r in got)


def test_records_over_several_partitions_all_come_back_in_partition_offset_order(kafka_broker, kafka_topic_factory):
    topic = kafka_topic_factory(partitions=3)
    sent = _records(300)

    kb.produce(kafka_broker.bootstrap, topic, sent)
    got = kb.consume_all(kafka_broker.bootstrap, topic, expect=300)

    assert sorted(_triples(got)) == sorted(_encoded(sent))
    assert {r.partition for r in got} == {0, 1, 2}
    assert [(r.partition, r.offset) for r in got] == sorted((r.partition, r.offset) for r in got)
    for partition in range(3):  # every partition from offset 0, no gap
        offsets = [r.offset for r in got if r.partition == partition]
        assert offsets == list(range(len(offsets)))


def test_producing_to_a_new_topic_creates_it(kafka_broker, kafka_topic_factory):
    topic = kafka_topic_factory(create=False)  # what Spark's Kafka sink relies on: auto.create.topics.enable

    kb.produce(kafka_broker.bootstrap, topic, _records(3))

    assert topic in kb.topic_names(kafka_broker.bootstrap)
    assert _triples(kb.consume_all(kafka_broker.bootstrap, topic, expect=3)) == _encoded(_records(3))


def test_reading_a_missing_topic_gives_nothing_and_does_not_create_it(kafka_broker, kafka_topic_factory):
    topic = kafka_topic_factory(create=False)

    assert kb.consume_all(kafka_broker.bootstrap, topic, timeout_s=5) == []
    assert topic not in kb.topic_names(kafka_broker.bootstrap)


def test_reading_with_a_count_waits_for_records_produced_later(kafka_broker, kafka_topic_factory):
    topic = kafka_topic_factory(create=False)
    writer = subprocess.Popen(  # produces ~1 s later, from another process, into a topic that does not exist yet
        [
            sys.executable,
            "-c",
            "import time; time.sleep(1); from scoring.launchers import kafka_broker as kb; "
            f"kb.produce({kafka_broker.bootstrap!r}, {topic!r}, [('k', 'late', None)])",
        ],
        cwd=ROOT,
    )
    try:
        got = kb.consume_all(kafka_broker.bootstrap, topic, expect=1, timeout_s=30)
    finally:
        assert writer.wait(timeout=30) == 0

    assert [(r.key, r.value) for r in got] == [(b"k", b"late")]


def test_creating_an_existing_topic_is_an_error_unless_exists_ok(kafka_broker, kafka_topic):
    with pytest.raises(ScoringError, match="did not create topic") as caught:
        kb.create_topic(kafka_broker.bootstrap, kafka_topic)
    assert "exists_ok" in str(caught.value)

    kb.create_topic(kafka_broker.bootstrap, kafka_topic, exists_ok=True)


def test_the_broker_logs_to_its_folder(kafka_broker):
    log = kafka_broker.log_path.read_text(errors="replace")

    assert kafka_broker.log_path.parent == kafka_broker.data_dir
    assert "Kafka Server started" in log or "BrokerServer id=1] Transition from STARTING to STARTED" in log


def test_the_jars_come_from_a_private_maven_repository_not_the_users(kafka_broker):
    lib = kb.resolve_broker_jars(kafka_broker.home)  # already resolved: returns at once
    marker = json.loads((lib / ".resolved").read_text())

    assert f"kafka_2.13-{kb.KAFKA_VERSION}.jar" in marker["jars"]
    assert f"slf4j-simple-{kb.SLF4J_VERSION}.jar" in marker["jars"]
    assert all((lib / jar).is_file() for jar in marker["jars"])
    # Maven ran with -Dmaven.repo.local inside the broker's home (see KAFKA.md: ~/.m2 would break Spark's Ivy).
    assert (kafka_broker.home / "m2" / "org" / "apache" / "kafka" / "kafka_2.13" / kb.KAFKA_VERSION).is_dir()


# --- without a broker -------------------------------------------------------------------------------------------------


def test_an_unreachable_broker_is_a_transient_error_within_seconds():
    bootstrap = f"127.0.0.1:{kb.free_ports(1)[0]}"  # nothing listens there
    calls = {
        "wait_for_broker": lambda: kb.wait_for_broker(bootstrap, timeout_s=2),
        "produce": lambda: kb.produce(bootstrap, "t", [(None, "v")], timeout_s=2),
        "consume_all": lambda: kb.consume_all(bootstrap, "t", expect=1, timeout_s=2),
        "create_topic": lambda: kb.create_topic(bootstrap, "t", timeout_s=2),
    }
    for name, call in calls.items():
        began = time.monotonic()
        with pytest.raises(BackendUnavailableError) as caught:
            call()
        assert time.monotonic() - began < 10, name
        assert bootstrap in caught.value.message, name
        assert caught.value.hint and "start the broker" in caught.value.hint, name
        assert is_transient(caught.value), name


def test_a_port_already_taken_is_a_clear_error_and_leaves_no_process(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((kb.LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = kb.Broker(tmp_path / "kafka", port=port)

        with pytest.raises(BackendUnavailableError, match="could not bind its ports") as caught:
            broker.start(timeout_s=60)

    assert str(broker.log_path) in caught.value.message  # the message points at the log, and quotes its tail
    assert "Address already in use" in caught.value.message
    assert broker.pid is None and not broker.is_running()


# --- a broker of the test's own ---------------------------------------------------------------------------------------


def test_records_survive_a_stop_and_the_broker_comes_back_on_the_same_ports(fresh_kafka_broker):
    broker = fresh_kafka_broker
    kb.create_topic(broker.bootstrap, "survivors")
    kb.produce(broker.bootstrap, "survivors", _records(100))
    bootstrap, pid = broker.bootstrap, broker.pid

    broker.stop()
    assert broker.pid is None and _gone(pid, timeout_s=0.1)  # stop returns once the process is gone

    # A new Broker on the same folder finds its ports (broker.json), its cluster and its records.
    again = kb.Broker(broker.data_dir)
    assert again.bootstrap == bootstrap and again.cluster_id == broker.cluster_id
    try:
        again.start()
        assert again.pid != pid
        assert _triples(kb.consume_all(bootstrap, "survivors", expect=100)) == _encoded(_records(100))
        kb.produce(bootstrap, "survivors", _records(50, start=100))
        assert _triples(kb.consume_all(bootstrap, "survivors", expect=150)) == _encoded(_records(150))
        again_pid = again.pid
    finally:
        again.stop()
    assert _gone(again_pid, timeout_s=0.1)


def test_a_killed_broker_starts_again_with_its_records(fresh_kafka_broker):
    broker = fresh_kafka_broker
    kb.create_topic(broker.bootstrap, "crash", partitions=2)
    kb.produce(broker.bootstrap, "crash", _records(200))
    bootstrap, pid = broker.bootstrap, broker.pid

    broker.kill()
    assert _gone(pid, timeout_s=0.1)
    with pytest.raises(BackendUnavailableError):
        kb.wait_for_broker(bootstrap, timeout_s=1)

    broker.start()  # recovers the unflushed logs; no wait for the dead incarnation's session (3 s, not 9)
    assert broker.bootstrap == bootstrap and broker.pid != pid
    assert sorted(_triples(kb.consume_all(bootstrap, "crash", expect=200))) == sorted(_encoded(_records(200)))
    kb.produce(bootstrap, "crash", _records(10, start=200))
    assert len(kb.consume_all(bootstrap, "crash", expect=210)) == 210

    broker.restart()
    assert len(kb.consume_all(bootstrap, "crash", expect=210)) == 210


def test_a_broker_dies_with_the_python_process_that_started_it(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        from scoring.launchers import kafka_broker as kb
        broker = kb.Broker({str(tmp_path / "kafka")!r}).start(timeout_s=120)
        print(broker.pid, flush=True)
        time.sleep(300)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    java_pid = None
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the child printed {line!r}"
        java_pid = int(line)
        assert psutil.pid_exists(java_pid)

        os.kill(parent.pid, signal.SIGKILL)  # no atexit, no finally: only PR_SET_PDEATHSIG can end the broker
        parent.wait(timeout=10)

        assert _gone(java_pid, timeout_s=10), f"broker pid {java_pid} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        if java_pid is not None and not _gone(java_pid, timeout_s=0):
            os.kill(java_pid, signal.SIGKILL)  # never leak a broker, even when the test fails
