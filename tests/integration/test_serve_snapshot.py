"""``scoring serve``: one answer, one snapshot; and which table is served (issue 17, sections 1 and 4).

Each test drives the service as a client would (httpx against a real server on loopback) while the table is
rewritten, deleted or re-created with delta-rs, or while the alias moves, and checks every answer independently:
against the table versions read back with delta-rs, or against the model versions the registry holds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from scoring import build_job_config, columns
from scoring.modes.http_api import Running
from scoring.modes.online import OnlineService

pytest.register_assert_rewrite("tests.integration.serve_fixtures")
from tests.integration.serve_fixtures import (  # noqa: E402
    DAY_A,
    DAY_B,
    KEYS,
    assert_record,
    feature_rows,
    newest_rows,
    serving,
)

pytest_plugins = ["tests.integration.serve_fixtures"]


def _read(path: str | Path, version: int | None = None) -> pa.Table:
    """A table (at `version`) read with delta-rs, the files through pyarrow's local filesystem."""
    import pyarrow.fs as pfs
    from deltalake import DeltaTable

    local = pfs.SubTreeFileSystem(str(Path(path).resolve()), pfs.LocalFileSystem())
    return DeltaTable(str(path), version=version).to_pyarrow_table(filesystem=local)


def _write(path: str | Path, table: pa.Table) -> int:
    """Overwrite (or create) the table at `path` with delta-rs; its new version."""
    from deltalake import DeltaTable, write_deltalake

    write_deltalake(str(path), table, partition_by=["ds"], mode="overwrite")
    return DeltaTable(str(path)).version()


def _with_run(table: pa.Table, run_id: str, *, scored_at: dt.datetime | None = None) -> pa.Table:
    """`table` with every row's scoring run id set to `run_id` (and its scored_at, when given)."""
    i = table.schema.get_field_index(columns.SCORING_RUN_ID)
    table = table.set_column(i, columns.SCORING_RUN_ID, pa.array([run_id] * table.num_rows, pa.string()))
    if scored_at is not None:
        j = table.schema.get_field_index(columns.SCORED_AT)
        kind = table.schema.field(j).type
        table = table.set_column(j, columns.SCORED_AT, pa.array([scored_at] * table.num_rows, kind))
    return table


@pytest.fixture(scope="module")
def base(served) -> pa.Table:
    """The served table's newest row per key (one row per key: no two rows of a key differ only in time)."""
    table = served.rows()
    return table.filter(pc.equal(pc.cast(table.column("ds"), pa.string()), DAY_B))


# -- section 4: one answer, one snapshot ---------------------------------------------------------------------------


def test_every_list_answer_comes_from_one_table_version_while_the_table_is_rewritten(served, base, tmp_path):
    path = tmp_path / "rewritten"
    _write(path, _with_run(base, "swap-0"))
    keys = [{"key": k} for k in range(KEYS)]
    answers: list[list[dict]] = []
    failures: list[str] = []
    stop = threading.Event()
    with serving(served.job(str(path), serve={"refresh_interval_s": 0.05, "max_batch_keys": KEYS})) as s:

        def client() -> None:
            with httpx.Client(base_url=s.url, timeout=60) as http:
                while not stop.is_set():
                    response = http.post("/v1/score", json=keys)
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        answers.append(response.json())

        threads = [threading.Thread(target=client) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            for i in range(1, 9):
                _write(path, _with_run(base, f"swap-{i}"))
                time.sleep(0.3)
            time.sleep(0.3)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    assert failures == []
    # independently: every version of the table, read with delta-rs, by the run id it holds
    history = {}
    for version in range(9):
        rows = _read(path, version)
        (run,) = set(rows.column(columns.SCORING_RUN_ID).to_pylist())
        history[run] = newest_rows(rows)
    mixed = [sorted({a[columns.SCORING_RUN_ID] for a in answer}) for answer in answers]
    mixed = [runs for runs in mixed if len(runs) != 1]
    assert mixed == [], f"{len(mixed)} of {len(answers)} answers mixed table versions: {mixed[:3]}"
    seen = {answer[0][columns.SCORING_RUN_ID] for answer in answers}
    assert len(seen) >= 3, seen  # the rewrites happened under the requests
    for n, answer in enumerate(answers):  # every answer, every item, against the version it names
        expected = history[answer[0][columns.SCORING_RUN_ID]]
        assert [item["key"] for item in answer] == list(range(KEYS))
        for item in answer if n % 10 == 0 else answer[::97]:
            assert_record(item, expected[str(item["key"])])
        assert [item["predictions"]["label"] for item in answer] == [expected[str(k)]["label"] for k in range(KEYS)]


def test_an_index_swapped_in_the_middle_of_a_request_does_not_reach_that_request(served, base, tmp_path):
    """Deterministic: the swap happens between two lookups of one request (the load test above only makes it
    likely)."""
    path = tmp_path / "swapped-mid-request"
    _write(path, _with_run(base, "one"))
    with serving(served.job(str(path), serve={"refresh_interval_s": 3600, "max_batch_keys": KEYS})) as s:
        service = s.service
        _write(path, _with_run(base, "two"))
        served_index = service._index
        lookups = 0
        original = served_index.get

        def get(key):
            nonlocal lookups
            lookups += 1
            if lookups == KEYS // 2:
                assert service.refresh_index()  # the new version is swapped in while the request is half answered
            return original(key)

        served_index.get = get
        answer = s.client.post("/v1/score", json=[{"key": k} for k in range(KEYS)]).json()
        assert lookups >= KEYS // 2
        assert {a[columns.SCORING_RUN_ID] for a in answer} == {"one"}
        after = s.client.post("/v1/score", json=[{"key": k} for k in range(KEYS)]).json()
        assert {a[columns.SCORING_RUN_ID] for a in after} == {"two"}
        expected = newest_rows(_read(path))
        for item in after[::50]:
            assert_record(item, expected[str(item["key"])])


def test_every_answer_uses_one_model_version_while_the_alias_moves(versioned):
    versioned.point_alias(versioned.v1)
    rows = versioned.served.features
    day = rows.filter(pc.equal(pc.cast(rows.column("ds"), pa.string()), DAY_A))
    day = day.slice(0, 200)
    items = [
        {"key": k, "features": f} for k, f in zip(day.column("customer_id").to_pylist(), feature_rows(day), strict=True)
    ]
    answers: list[list[dict]] = []
    failures: list[str] = []
    stop = threading.Event()
    try:
        # a generous deadline: on a loaded CI machine a 200-row live call may take longer than the default second
        with serving(versioned.job(serve={"alias_check_interval_s": 3600, "deadline_s": 60})) as s:

            def client() -> None:
                with httpx.Client(base_url=s.url, timeout=60) as http:
                    while not stop.is_set():
                        response = http.post("/v1/score", json=items)
                        if response.status_code != 200:
                            failures.append(f"{response.status_code} {response.text[:200]}")
                        else:
                            answers.append(response.json())

            threads = [threading.Thread(target=client) for _ in range(2)]
            for thread in threads:
                thread.start()
            try:
                for i in range(6):
                    versioned.point_alias(versioned.v2 if i % 2 == 0 else versioned.v1)
                    assert s.service.check_alias()
                    # three more answers: with two clients, at least one of them was asked after the move, so both
                    # versions answer whatever the machine's speed
                    seen = len(answers) + len(failures)
                    deadline = time.monotonic() + 120
                    while len(answers) + len(failures) < seen + 3 and time.monotonic() < deadline:
                        time.sleep(0.02)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=60)
    finally:
        versioned.point_alias(versioned.v1)
    assert failures == []
    by_version = {versioned.v1: 0, versioned.v2: 0}
    for answer in answers:
        assert all("status" not in item for item in answer), answer[:2]
        versions = {item[columns.MODEL_VERSION] for item in answer}
        sources = {(item["source"], item["stale"]) for item in answer}
        assert len(versions) == 1, f"an answer mixed model versions {versions}"
        (version,) = versions
        # the snapshot's model decides every item alike: v1 -> its current precomputed scores, v2 -> all live
        expected = {("precomputed", False)} if version == versioned.v1 else {("live", False)}
        assert sources == expected, (version, sources)
        by_version[version] += 1
    assert by_version[versioned.v1] and by_version[versioned.v2], by_version


# -- section 1: which table is served ------------------------------------------------------------------------------


def test_a_table_recreated_at_the_same_place_with_the_same_version_number_is_reloaded(served, base, tmp_path):
    path = tmp_path / "recreated"
    assert _write(path, _with_run(base, "first-table")) == 0
    with serving(served.job(str(path), serve={"refresh_interval_s": 3600})) as s:
        assert s.client.get("/v1/scores/7").json()[columns.SCORING_RUN_ID] == "first-table"
        shutil.rmtree(path)
        assert _write(path, _with_run(base.slice(0, 500), "second-table")) == 0  # same place, same version number
        assert s.service.refresh_index() is True
        answer = s.client.get("/v1/scores/7").json()
        assert answer[columns.SCORING_RUN_ID] == "second-table"
        assert_record(answer, newest_rows(_read(path))["7"])
        assert s.client.get("/v1/scores/900").status_code == 404  # the deleted table's rows are not served on
        assert s.service.refresh_index() is False  # and an unchanged table is not reloaded


@dataclasses.dataclass
class _Clock:
    offset_s: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s


def test_a_served_table_that_disappears_is_reported_at_once_and_served_until_max_age_s(served, base, tmp_path):
    path = tmp_path / "vanishing"
    now = dt.datetime.now(dt.UTC)
    _write(path, _with_run(base, "before", scored_at=now))
    clock = _Clock()
    tree = served.job(str(path), serve={"refresh_interval_s": 3600, "max_age_s": 600, "serve_stale": True})
    service = OnlineService(build_job_config(tree), clock=clock).start()
    try:
        with Running(service) as running, httpx.Client(base_url=running.url, timeout=60) as http:
            assert http.get("/v1/status").json()["index_error"] is None
            shutil.rmtree(path)
            assert service.refresh_index() is False
            status = http.get("/v1/status").json()
            assert str(path) in status["index_error"] and "gone" in status["index_error"], status
            # within serve.max_age_s: the last good index answers, current; ready
            answer = http.get("/v1/scores/3").json()
            assert answer[columns.SCORING_RUN_ID] == "before" and answer["stale"] is False
            assert http.get("/v2/health/ready").status_code == 200
            # past it: answers are marked stale, readiness turns 503 naming the missing table
            clock.offset_s = 601
            answer = http.get("/v1/scores/3").json()
            assert answer["stale"] is True and str(path) in answer["stale_reason"], answer
            listed = http.post("/v1/score", json=[{"key": 3}, {"key": 4}]).json()
            assert [a["stale"] for a in listed] == [True, True]
            ready = http.get("/v2/health/ready")
            assert ready.status_code == 503 and str(path) in ready.json()["reason"], ready.text
            # the table comes back: fresh again, ready again
            _write(path, _with_run(base, "after", scored_at=now + dt.timedelta(seconds=601)))
            assert service.refresh_index() is True
            assert http.get("/v2/health/ready").status_code == 200
            answer = http.get("/v1/scores/3").json()
            assert answer[columns.SCORING_RUN_ID] == "after" and answer["stale"] is False
    finally:
        service.close()
