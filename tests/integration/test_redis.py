"""The local Redis server (Debian's ``redis-server``, fetched without root) and the versioned store of score records
the online service reads. No mocks: a real server, real signals, redis-py against it; what the store wrote is checked
with a plain redis-py client, not only through the reader under test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import redis

from scoring.adapters import redis_store as store
from scoring.errors import BackendUnavailableError, ScoringError, is_transient
from scoring.launchers import redis_server as rs

pytest_plugins = ["tests.integration.redis_fixtures"]  # redis_server, redis_prefix, fresh_redis_server

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "/lake/scores_delta"
WAIT_S = 60.0
"""Only a guard against a hang: how long a test waits for a thread or a process it started."""


def _records(n: int, tag: str) -> list[tuple[str, bytes]]:
    """`n` records whose values name `tag`, so that two versions' values differ."""
    return [(f"customer-{i}", json.dumps({"id": i, "score": i / n, "tag": tag}).encode()) for i in range(n)]


def _keys_of(url: str, prefix: str, version: int) -> list[bytes]:
    """Every key of `version` under `prefix`, read with a plain client (not the code under test)."""
    client = redis.Redis.from_url(url)
    try:
        pattern = store.record_key(prefix, version, "").replace("\\", "\\\\").replace("*", "\\*") + "*"
        return sorted(client.scan_iter(match=pattern, count=1000))
    finally:
        client.close()


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
        time.sleep(0.05)


# --- the server ------------------------------------------------------------------------------------------------------


def test_the_server_answers_on_loopback_and_stops_by_pid(fresh_redis_server):
    server = fresh_redis_server
    pid = server.pid

    assert server.is_running() and pid is not None
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert redis.Redis.from_url(server.url).ping()
    listening = {c.laddr for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert {(addr.ip, addr.port) for addr in listening} == {("127.0.0.1", server.port)}
    assert "Ready to accept connections" in server.log_path.read_text()

    server.stop()

    assert _gone(pid)
    assert not server.is_running() and server.pid is None
    assert not server.ping()
    server.stop()  # idempotent


def test_kill_leaves_no_process_and_start_comes_back_on_the_same_port_empty(fresh_redis_server):
    server = fresh_redis_server
    port, pid = server.port, server.pid
    redis.Redis.from_url(server.url).set("k", b"v")

    server.kill()

    assert pid is not None and _gone(pid)
    assert not server.ping()
    server.start()
    assert server.port == port and server.pid != pid
    client = redis.Redis.from_url(server.url)
    assert client.get("k") is None  # nothing persisted: --save '' and --appendonly no
    client.set("k", b"again")
    server.restart()
    assert server.port == port and server.ping()


def test_a_server_asked_to_persist_keeps_its_data_across_a_restart(tmp_path):
    with rs.RedisServer(tmp_path / "redis", config={"appendonly": "yes"}) as server:
        redis.Redis.from_url(server.url).set("k", b"kept")
        server.restart()
        assert redis.Redis.from_url(server.url).get("k") == b"kept"
    assert not server.is_running()


def test_the_server_dies_with_the_process_that_started_it(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        from scoring.launchers.redis_server import RedisServer
        server = RedisServer({str(tmp_path / "redis")!r}).start()
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert psutil.Process(pid).name().startswith("redis")
    finally:
        parent.send_signal(signal.SIGKILL)  # no atexit, no finally: only PR_SET_PDEATHSIG can stop the server
        parent.wait(timeout=WAIT_S)

    assert _gone(pid)


def test_options_the_server_owns_cannot_be_overridden(tmp_path):
    with pytest.raises(ScoringError, match="bind") as caught:
        rs.RedisServer(tmp_path, config={"bind": "0.0.0.0"})
    assert caught.value.hint


def test_a_start_failure_says_why_with_the_log_and_leaves_no_process(tmp_path):
    server = rs.RedisServer(tmp_path / "redis", config={"maxmemory-policy": "no-such-policy"})

    with pytest.raises(ScoringError, match="exited with status") as caught:
        server.start()

    assert "no-such-policy" in str(caught.value)  # the log's tail, where Redis says what is wrong
    assert not server.is_running()


def test_a_fetch_into_an_empty_home_unpacks_a_redis_server_that_runs(tmp_path, monkeypatch):
    if shutil.which("apt-get") is None:
        pytest.skip("no apt-get on this machine: redis-server comes from PATH or SCORING_REDIS_HOME here")
    home = tmp_path / "redis-home"
    monkeypatch.setenv(rs.HOME_ENV, str(home))

    binary = rs.resolve_redis_server()

    assert binary == home / "usr" / "bin" / "redis-server"
    assert rs.redis_version(binary) >= rs.MIN_REDIS_VERSION
    marker = json.loads((home / ".fetched").read_text())
    assert any(p.startswith("redis-server=") for p in marker["packages"])
    assert rs.resolve_redis_server() == binary  # the second time: nothing fetched, the same binary
    with rs.RedisServer(tmp_path / "data", binary=binary) as server:
        assert server.ping()


def test_a_home_of_the_users_own_is_used_as_it_is_and_never_overwritten(redis_server, tmp_path, monkeypatch):
    own, foreign = tmp_path / "own", tmp_path / "foreign"
    wrapper = own / "usr" / "bin" / "redis-server"  # a build of the user's own: here, a script that runs ours
    wrapper.parent.mkdir(parents=True)
    env = rs.server_environment(redis_server.binary)
    wrapper.write_text(
        f'#!/bin/sh\nLD_LIBRARY_PATH={env.get("LD_LIBRARY_PATH", "")!r} exec {str(redis_server.binary)!r} "$@"\n'
    )
    wrapper.chmod(0o755)
    (foreign / "usr").mkdir(parents=True)
    (foreign / "usr" / "precious.txt").write_text("keep me")

    monkeypatch.setenv(rs.HOME_ENV, str(own))
    assert rs.resolve_redis_server() == wrapper
    monkeypatch.setenv(rs.HOME_ENV, str(foreign))
    with pytest.raises(ScoringError, match="not put there by a fetch") as caught:
        rs.resolve_redis_server()

    assert rs.HOME_ENV in (caught.value.hint or "")
    assert (foreign / "usr" / "precious.txt").read_text() == "keep me"


def test_a_fetch_without_apt_fails_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv(rs.HOME_ENV, str(tmp_path / "redis-home"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))

    with pytest.raises(ScoringError, match="apt-cache") as caught:
        rs.resolve_redis_server()

    assert "redis-server" in (caught.value.hint or "")


# --- publishing and reading --------------------------------------------------------------------------------------------


def test_published_records_read_back_exactly(redis_server, redis_prefix):
    records = _records(2500, "v1")
    progress: list[int] = []

    result = store.publish(
        redis_server.url, redis_prefix, 1, records, source=SOURCE, batch_keys=1000, on_progress=progress.append
    )

    assert (result.version, result.keys, result.published, result.previous_version) == (1, 2500, True, None)
    assert progress == [1000, 2000, 2500]
    with store.RedisReader(redis_server.url, redis_prefix) as reader:
        current = reader.current()
        assert current is not None
        assert (current.version, current.source, current.keys) == (1, SOURCE, 2500)
        assert current.published_at.tzinfo is not None
        assert reader.mget(1, [k for k, _ in records]) == [v for _, v in records]
        assert [reader.get(1, k) for k, _ in records[:50]] == [v for _, v in records[:50]]
        assert reader.get(1, "no-such-customer") is None
        assert reader.mget(1, []) == []
        assert reader.ping()
    assert len(_keys_of(redis_server.url, redis_prefix, 1)) == 2500


def test_nothing_is_current_before_the_first_publish(redis_server, redis_prefix):
    with store.RedisReader(redis_server.url, redis_prefix) as reader:
        assert reader.current() is None


def test_publishing_the_current_version_again_writes_nothing(redis_server, redis_prefix):
    records = _records(300, "v1")
    store.publish(redis_server.url, redis_prefix, 1, records, source=SOURCE)
    redis.Redis.from_url(redis_server.url).delete(store.record_key(redis_prefix, 1, "customer-7"))
    consumed: list[str] = []

    def again():
        for key, value in records:
            consumed.append(key)
            yield key, value

    result = store.publish(redis_server.url, redis_prefix, 1, again(), source=SOURCE, on_progress=consumed.append)

    assert (result.version, result.keys, result.published, result.previous_version) == (1, 300, False, None)
    assert consumed == []  # the records were not even read
    with store.RedisReader(redis_server.url, redis_prefix) as reader:
        assert reader.get(1, "customer-7") is None  # had anything been written, this key would be back
        assert reader.get(1, "customer-8") == records[8][1]


def test_the_same_version_of_another_table_is_refused_and_the_served_keys_stay(redis_server, redis_prefix, tmp_path):
    """A table deleted and re-created at the same place (another Delta table id), or another table, whose version
    equals the served one, must not overwrite the served keys in place; the same table by another spelling is the
    same table."""
    table = tmp_path / "scores"
    table.mkdir()
    served = _records(50, "first")
    store.publish(redis_server.url, redis_prefix, 3, served, source=store.source_of(f"file://{table}", "id-1"))
    for other in (store.source_of(f"file://{table}", "id-2"), store.source_of("s3://bucket/scores", "id-1")):
        with pytest.raises(ScoringError, match=r"already served from .*overwrite the served ones") as caught:
            store.publish(redis_server.url, redis_prefix, 3, _records(50, "second"), source=other)
        assert "serve.redis.prefix" in caught.value.hint
    same = store.publish(redis_server.url, redis_prefix, 3, _records(50, "x"), source=str(table) + "/#id-1")
    assert same.published is False
    assert store.publish(redis_server.url, redis_prefix, 3, [], source=str(table)).published is False  # no id: place
    with store.RedisReader(redis_server.url, redis_prefix) as reader:
        assert [reader.get(3, k) for k, _ in served] == [v for _, v in served]


def test_a_new_version_becomes_current_and_the_old_keys_are_deleted(redis_server, redis_prefix):
    old, new = _records(1200, "v1"), _records(900, "v2")
    store.publish(redis_server.url, redis_prefix, 1, old, source=SOURCE)

    result = store.publish(redis_server.url, redis_prefix, 2, new, source=SOURCE + "@2", batch_keys=400)

    assert (result.version, result.keys, result.published, result.previous_version) == (2, 900, True, 1)
    assert result.removed_keys == 1200
    with store.RedisReader(redis_server.url, redis_prefix) as reader:
        current = reader.current()
        assert current is not None and (current.version, current.source, current.keys) == (2, SOURCE + "@2", 900)
        assert reader.mget(2, [k for k, _ in new]) == [v for _, v in new]
        assert reader.mget(1, [k for k, _ in old]) == [None] * len(old)
    assert _keys_of(redis_server.url, redis_prefix, 1) == []
    client = redis.Redis.from_url(redis_server.url)
    assert client.smembers(store.retired_key(redis_prefix)) == set()
    meta = client.hgetall(store.meta_key(redis_prefix))
    assert meta[b"version"] == b"2" and meta[b"complete"] == b"1"


def test_a_reader_racing_a_switch_sees_each_version_whole_and_never_goes_back(redis_server, redis_prefix):
    old, new = _records(3000, "v1"), _records(3000, "v2")
    values = {1: dict(old), 2: dict(new)}
    probe = [old[0][0], old[-1][0]]  # the first and the last key written
    store.publish(redis_server.url, redis_prefix, 1, old, source=SOURCE)
    seen: list[int] = []
    problems: list[str] = []
    stop, read_once = threading.Event(), threading.Event()

    def read() -> None:
        with store.RedisReader(redis_server.url, redis_prefix) as reader:
            while not stop.is_set():
                current = reader.current()
                assert current is not None
                got = reader.mget(current.version, probe)
                if None in got:  # only allowed when the version moved on meanwhile
                    again = reader.current()
                    if again is None or again.version == current.version:
                        problems.append(f"version {current.version} is current but lacks a key")
                elif got != [values[current.version][k] for k in probe]:
                    problems.append(f"version {current.version} has another version's values")
                seen.append(current.version)
                read_once.set()

    def wait_for_a_read(_written: int) -> None:  # each pipeline waits until the reader read in between
        read_once.clear()
        assert read_once.wait(WAIT_S)

    reader_thread = threading.Thread(target=read, daemon=True)
    reader_thread.start()
    try:
        store.publish(
            redis_server.url, redis_prefix, 2, new, source=SOURCE, batch_keys=500, on_progress=wait_for_a_read
        )
        read_once.clear()
        assert read_once.wait(WAIT_S)  # and once after the switch
    finally:
        stop.set()
        reader_thread.join(WAIT_S)

    assert problems == []
    assert seen == sorted(seen) and set(seen) == {1, 2}


def test_an_interrupted_publish_leaves_the_old_version_current_and_a_rerun_completes_it(redis_server, redis_prefix):
    old, new = _records(1500, "v1"), _records(1500, "v2")
    store.publish(redis_server.url, redis_prefix, 1, old, source=SOURCE)

    class Interrupted(Exception):
        pass

    def die_after_the_first_pipeline(written: int) -> None:
        raise Interrupted(written)

    with pytest.raises(Interrupted):
        store.publish(
            redis_server.url,
            redis_prefix,
            2,
            new,
            source=SOURCE,
            batch_keys=500,
            on_progress=die_after_the_first_pipeline,
        )

    with store.RedisReader(redis_server.url, redis_prefix) as reader:
        current = reader.current()
        assert current is not None and (current.version, current.keys) == (1, 1500)
        assert reader.mget(1, [k for k, _ in old]) == [v for _, v in old]
        assert len(_keys_of(redis_server.url, redis_prefix, 2)) == 500  # half-written, and unread

        result = store.publish(redis_server.url, redis_prefix, 2, new, source=SOURCE, batch_keys=500)

        assert (result.published, result.previous_version, result.keys) == (True, 1, 1500)
        current = reader.current()
        assert current is not None and current.version == 2
        assert reader.mget(2, [k for k, _ in new]) == [v for _, v in new]
    assert _keys_of(redis_server.url, redis_prefix, 1) == []


def test_an_interrupted_deletion_is_finished_by_the_next_publish_even_one_that_writes_nothing(
    redis_server, redis_prefix
):
    store.publish(redis_server.url, redis_prefix, 1, _records(10, "v1"), source=SOURCE)
    store.publish(redis_server.url, redis_prefix, 2, _records(10, "v2"), source=SOURCE)
    # What a publish that died right after its switch leaves: the replaced version's keys and its retired mark.
    client = redis.Redis.from_url(redis_server.url)
    client.set(store.record_key(redis_prefix, 1, "left-over"), b"{}")
    client.sadd(store.retired_key(redis_prefix), 1)

    result = store.publish(redis_server.url, redis_prefix, 2, _records(10, "v2"), source=SOURCE)

    assert (result.published, result.removed_keys) == (False, 1)
    assert _keys_of(redis_server.url, redis_prefix, 1) == []
    assert client.smembers(store.retired_key(redis_prefix)) == set()


def test_keys_with_colons_unicode_spaces_and_glob_characters_round_trip(redis_server, redis_prefix):
    keys = [
        "a:b:c",
        "ключ:значение",
        "emoji 🎯 key",
        "  spaces around  ",
        "",
        "tab\tand\nnewline",
        "*?[glob]\\",
        "v1:k:x",
    ]
    records = [(k, json.dumps({"key": k, "note": "naïve 😀"}, ensure_ascii=False).encode()) for k in keys]

    store.publish(redis_server.url, redis_prefix, 7, records, source=SOURCE)

    with store.RedisReader(redis_server.url, redis_prefix) as reader:
        assert reader.mget(7, keys) == [v for _, v in records]
        assert [reader.get(7, k) for k in keys] == [v for _, v in records]
        assert reader.get(7, "a:b") is None


def test_deleting_an_old_version_spares_a_prefix_that_its_glob_characters_would_match(redis_server, redis_prefix):
    globby, sibling = f"{redis_prefix}*[x]?", f"{redis_prefix}-other[x]!"  # unescaped, `globby` would match `sibling`
    store.publish(redis_server.url, sibling, 1, _records(20, "sibling"), source=SOURCE)
    store.publish(redis_server.url, globby, 1, _records(20, "v1"), source=SOURCE)

    result = store.publish(redis_server.url, globby, 2, _records(20, "v2"), source=SOURCE)

    assert result.removed_keys == 20
    with store.RedisReader(redis_server.url, sibling) as reader:
        assert reader.mget(1, [k for k, _ in _records(20, "sibling")]) == [v for _, v in _records(20, "sibling")]


def test_drop_version_deletes_an_abandoned_version_but_refuses_the_current_one(redis_server, redis_prefix):
    store.publish(redis_server.url, redis_prefix, 1, _records(10, "v1"), source=SOURCE)
    with pytest.raises(KeyboardInterrupt):  # a publish abandoned midway, never re-run

        def interrupt(_written: int) -> None:
            raise KeyboardInterrupt

        store.publish(
            redis_server.url, redis_prefix, 5, _records(30, "v5"), source=SOURCE, batch_keys=10, on_progress=interrupt
        )

    assert store.drop_version(redis_server.url, redis_prefix, 5) == 10
    assert _keys_of(redis_server.url, redis_prefix, 5) == []
    with pytest.raises(ScoringError, match="current") as caught:
        store.drop_version(redis_server.url, redis_prefix, 1)
    assert caught.value.hint
    assert len(_keys_of(redis_server.url, redis_prefix, 1)) == 10


def test_a_record_that_is_not_key_text_and_json_bytes_is_refused_and_nothing_switches(redis_server, redis_prefix):
    store.publish(redis_server.url, redis_prefix, 1, _records(5, "v1"), source=SOURCE)

    with pytest.raises(ScoringError, match="record 2") as caught:
        store.publish(
            redis_server.url, redis_prefix, 2, [("a", b"{}"), ("b", b"{}"), ("c", {"not": "bytes"})], source=SOURCE
        )

    assert caught.value.hint
    with store.RedisReader(redis_server.url, redis_prefix) as reader:
        current = reader.current()
        assert current is not None and current.version == 1


# --- an unreachable server ---------------------------------------------------------------------------------------------


def test_a_killed_server_is_a_backend_unavailable_error_naming_the_url(fresh_redis_server):
    url = fresh_redis_server.url
    store.publish(url, "scores", 1, _records(10, "v1"), source=SOURCE)
    reader = store.RedisReader(url, "scores")
    assert reader.current() is not None  # the pool holds a live connection now

    fresh_redis_server.kill()

    for read in (reader.current, lambda: reader.get(1, "customer-1"), lambda: reader.mget(1, ["customer-1"])):
        with pytest.raises(BackendUnavailableError) as caught:
            read()
        assert url in str(caught.value) and caught.value.hint and is_transient(caught.value)
        assert isinstance(caught.value.__cause__, redis.exceptions.RedisError)
    assert reader.ping() is False
    with pytest.raises(BackendUnavailableError, match=url.replace("/", "\\/")):
        store.publish(url, "scores", 2, _records(10, "v2"), source=SOURCE)

    fresh_redis_server.start()  # the same reader works again once the server is back (empty: nothing persisted)
    assert reader.ping() and reader.current() is None
    reader.close()


def test_a_password_in_the_url_never_shows_in_an_error(fresh_redis_server):
    url = f"redis://user:s3cret@127.0.0.1:{fresh_redis_server.port}/0"
    fresh_redis_server.kill()

    with pytest.raises(BackendUnavailableError) as caught:
        store.RedisReader(url, "scores").current()

    assert "s3cret" not in str(caught.value)
    assert f"redis://user:***@127.0.0.1:{fresh_redis_server.port}/0" in str(caught.value)


def test_the_environment_of_a_fetched_server_leads_with_its_own_libraries(redis_server):
    binary = redis_server.binary
    assert binary is not None
    env = rs.server_environment(binary)
    if binary.parent.parent.parent.joinpath(".fetched").is_file():
        lib_path = env["LD_LIBRARY_PATH"].split(os.pathsep)
        assert lib_path[0].startswith(str(binary.parent.parent.parent))
    else:  # a redis-server from PATH runs in this process's environment
        assert env == dict(os.environ)
