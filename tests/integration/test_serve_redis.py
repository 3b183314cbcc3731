"""``scoring serve`` with ``serve.index: redis``, end to end against a real ``redis-server``: ``scoring publish-online``
(the command, as a subprocess) loads the batch job's output into Redis; the service answers every key exactly as the
in-memory index does (and as the table holds it, read with delta-rs); publishing the same table version again
writes nothing; a new table version, written by the batch job and published, is picked up by the running service.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
import yaml

from scoring import build_job_config, columns
from scoring.modes.online import publish
from tests.integration.conftest import delta_version, read_delta

pytest.register_assert_rewrite("tests.integration.serve_fixtures")  # its helpers assert; imported before the plugin
from tests.integration.serve_fixtures import (  # noqa: E402
    DAY_A,
    DAY_B,
    KEYS,
    assert_record,
    newest_rows,
    score_into,
    serving,
)

pytest_plugins = ["tests.integration.serve_fixtures", "tests.integration.redis_fixtures"]

SCORING = [sys.executable, "-m", "scoring.cli"]


@pytest.fixture(scope="module")
def table_copy(served, tmp_path_factory) -> str:
    """A copy of the served table of this module's own: a test writes a new version of it."""
    path = tmp_path_factory.mktemp("redis-served") / "scores"
    shutil.copytree(served.output_table, path)
    return str(path)


def _redis_job(served, table: str, url: str, prefix: str, **serve) -> dict:
    return served.job(table, serve={"index": "redis", "redis": {"url": url, "prefix": prefix}, **serve})


def _publish_command(tree: dict, tmp_path: Path) -> dict:
    config = tmp_path / f"publish-{uuid.uuid4().hex[:6]}.yaml"
    config.write_text(yaml.safe_dump(tree))
    done = subprocess.run(
        [*SCORING, "publish-online", str(config), "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _writes(client: redis.Redis) -> int:
    """Writes the server has taken since its last save (it never saves): a counter of every change."""
    return int(client.info("persistence")["rdb_changes_since_last_save"])


def _keys(client: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(match=pattern, count=1000))


def _answers(client, keys) -> list[dict]:
    answers = []
    for start in range(0, len(keys), 1000):
        response = client.post("/v1/score", json=[{"key": k} for k in keys[start : start + 1000]])
        assert response.status_code == 200, response.text
        answers += response.json()
    return answers


def _wait_for_version(s, version: int) -> None:
    deadline = time.monotonic() + 60
    while s.client.get("/v1/status").json()["table_version"] != version and time.monotonic() < deadline:
        time.sleep(0.05)


def test_publish_online_then_serve_from_redis_like_from_memory_and_pick_up_a_new_version(
    spark, served, table_copy, redis_server, tmp_path
):
    prefix = f"test-serve-{uuid.uuid4().hex[:8]}"
    tree = _redis_job(served, table_copy, redis_server.url, prefix, refresh_interval_s=0.2)
    client = redis.Redis.from_url(redis_server.url)
    keys = list(range(KEYS))
    try:
        with serving(tree) as from_redis, serving(served.job(table_copy, serve={"refresh_interval_s": 0.2})) as memory:
            # nothing published yet: not ready, every key a miss
            not_ready = from_redis.client.get("/v2/health/ready")
            assert not_ready.status_code == 503 and "not loaded" in not_ready.json()["reason"]
            assert from_redis.client.get("/v1/scores/1").status_code == 404
            assert from_redis.client.get("/v2/health/live").status_code == 200

            version = delta_version(table_copy)
            summary = _publish_command(tree, tmp_path)
            assert summary["published"] is True and summary["keys"] == KEYS
            assert summary["table_version"] == version and summary["prefix"] == prefix
            assert _keys(client, f"{prefix}:v{version}:k:*") == KEYS

            _wait_for_version(from_redis, version)
            assert from_redis.client.get("/v2/health/ready").status_code == 200
            expected = newest_rows(read_delta(table_copy))
            redis_answers, memory_answers = _answers(from_redis.client, keys), _answers(memory.client, keys)
            assert redis_answers == memory_answers
            for key, answer in zip(keys, redis_answers, strict=True):
                assert_record(answer, expected[str(key)])
            assert {a[columns.SCORING_RUN_ID] for a in redis_answers} == {served.run_b.run_id}
            assert from_redis.client.get("/v1/scores/5").json() == memory.client.get("/v1/scores/5").json()
            missing = from_redis.client.get("/v1/scores/no-such-key")
            assert missing.status_code == 404 and missing.json()["field"] == "key"

            # the same version again: nothing written
            writes = _writes(client)
            again = _publish_command(tree, tmp_path)
            assert again["published"] is False and again["table_version"] == version
            assert _writes(client) == writes

            # a new version of the table (the batch job rescores the first day: its rows are the newest now)
            rescored = score_into(spark, served.lake, served.input_table, table_copy, f"ds = '{DAY_A}'")
            new_version = delta_version(table_copy)
            assert new_version > version
            summary = _publish_command(tree, tmp_path)
            assert summary["published"] is True and summary["table_version"] == new_version
            assert summary["previous_version"] == version
            assert _keys(client, f"{prefix}:v{new_version}:k:*") == KEYS
            assert _keys(client, f"{prefix}:v{version}:k:*") == 0  # the replaced version is gone

            _wait_for_version(from_redis, new_version)
            _wait_for_version(memory, new_version)
            expected = newest_rows(read_delta(table_copy))
            redis_answers, memory_answers = _answers(from_redis.client, keys), _answers(memory.client, keys)
            assert redis_answers == memory_answers
            for key, answer in zip(keys, redis_answers, strict=True):
                assert_record(answer, expected[str(key)])
                assert answer[columns.SCORING_RUN_ID] == rescored.run_id and answer["partition"] == {"ds": DAY_A}
            status = from_redis.client.get("/v1/status").json()
            assert status["index"] == "redis" and status["table_version"] == new_version
    finally:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.unlink(key)
        client.close()


def test_composite_keys_and_a_partition_through_redis(served, redis_server):
    prefix = f"test-serve-{uuid.uuid4().hex[:8]}"
    tree = _redis_job(served, served.output_table, redis_server.url, prefix)
    tree["input"]["key"] = ["customer_id", "ds"]
    composite = build_job_config(tree)
    partition_tree = _redis_job(served, served.output_table, redis_server.url, f"{prefix}-a", partition={"ds": DAY_A})
    client = redis.Redis.from_url(redis_server.url)
    table = read_delta(served.output_table)
    try:
        assert publish(composite)["keys"] == 2 * KEYS
        assert publish(build_job_config(partition_tree))["keys"] == KEYS
        expected = newest_rows(table, ("customer_id", "ds"))
        with serving(tree) as s:
            for key in (0, 99, KEYS - 1):
                for day in (DAY_A, DAY_B):
                    row = expected[(str(key), day)]
                    assert_record(s.client.get(f"/v1/scores/{key}/{day}").json(), row)
                    assert_record(s.client.post("/v1/score", json={"key": [key, day]}).json(), row)
                    answer = s.client.post("/v1/score", json={"key": {"ds": day, "customer_id": key}})
                    assert_record(answer.json(), row)
            assert s.client.get(f"/v1/scores/{KEYS}/{DAY_A}").status_code == 404
        day_a = newest_rows(table.filter([d == DAY_A for d in table.column("ds").to_pylist()]))
        with serving(partition_tree) as s:
            answers = _answers(s.client, list(range(KEYS)))
            for key, answer in enumerate(answers):
                assert_record(answer, day_a[str(key)])
            assert {a[columns.SCORING_RUN_ID] for a in answers} == {served.run_a.run_id}
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.unlink(key)
        client.close()
