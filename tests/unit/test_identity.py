"""One identity per table (scoring.core.identity): every spelling of a place is one identity, different places are
different, and the delta-rs readers open a table at its identity."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.adapters import deltalog
from scoring.core.identity import TableIdentity, same_table, table_identity
from scoring.errors import ConfigError

_SEGMENT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x00"), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))


def _spellings(folder: str, cwd: str) -> list[str]:
    """Every way this project accepts to write the local folder `folder` (absolute, under `cwd`)."""
    from urllib.parse import quote

    parent, name = os.path.split(folder)
    spellings = [
        folder,
        folder + "/",
        folder + "//",
        os.path.relpath(folder, cwd),
        "./" + os.path.relpath(folder, cwd),
        f"{parent}/./{name}",
        f"{parent}/{name}/../{name}",
        "file://" + quote(folder),
        "file:" + quote(folder) + "/",
        "file://localhost" + quote(folder),
    ]
    if not set("%#?") & set(folder):  # a URI written by hand, unescaped: only where that is still the same path
        spellings += [f"file:{folder}", f"file://{folder}/", f"FILE://{folder}"]
    return spellings


@settings(max_examples=60, derandomize=True, deadline=None)
@given(segments=st.lists(_SEGMENT, min_size=1, max_size=3))
def test_every_spelling_of_a_local_folder_is_one_identity(tmp_path_factory, segments):
    base = tmp_path_factory.getbasetemp()
    folder = os.path.join(str(base), *segments)
    previous = os.getcwd()
    os.chdir(base)
    try:
        identities = {table_identity(spelling) for spelling in _spellings(folder, str(base))}
    finally:
        os.chdir(previous)
    assert len(identities) == 1, identities
    (identity,) = identities
    assert identity.is_local and identity.local_path == os.path.realpath(folder)
    assert table_identity(identity.uri) == identity  # the canonical form is a fixed point


def test_a_symlinked_folder_is_the_folder_it_points_at(tmp_path):
    real = tmp_path / "real" / "scores"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert same_table(tmp_path / "link" / "scores", real)
    assert same_table(f"file://{tmp_path}/link/scores/", str(real))


def test_a_percent_sign_is_literal_in_a_path_and_an_escape_in_a_uri(tmp_path):
    literal = table_identity(str(tmp_path / "a%20b"))
    assert literal.local_path == str(tmp_path / "a%20b")
    assert table_identity(f"file://{tmp_path}/a%20b").local_path == str(tmp_path / "a b")
    assert not same_table(str(tmp_path / "a%20b"), f"file://{tmp_path}/a%20b")


@pytest.mark.parametrize(
    "a, b",
    [
        ("s3://bucket/lake/scores", "s3a://bucket/lake/scores/"),
        ("s3://bucket/lake/scores", "s3n://BUCKET/lake//scores"),
        ("s3://bucket/lake/scores", "S3A://bucket/lake/x/../scores"),
        ("s3://bucket/lake/a b", "s3a://bucket/lake/a%20b"),
        ("abfss://c@acct.dfs.core.windows.net/t", "abfs://c@acct.dfs.core.windows.net/t/"),
        ("gs://b/t", "gcs://b/t"),
    ],
)
def test_one_object_store_place_is_one_identity(a, b):
    assert same_table(a, b)


@pytest.mark.parametrize(
    "a, b",
    [
        ("s3://bucket/lake/scores", "s3://other/lake/scores"),
        ("s3://bucket/lake/scores", "gs://bucket/lake/scores"),
        ("s3://bucket/lake/scores", "s3://bucket/lake/scores_runs"),
        ("/tmp/lake/scores", "s3://tmp/lake/scores"),
        ("/tmp/lake/scores", "/tmp/lake/Scores"),
    ],
)
def test_different_places_are_different_identities(a, b):
    assert not same_table(a, b)


@pytest.mark.parametrize("bad", ["", "   ", "s3:///no-bucket", "file://otherhost/x"])
def test_a_reference_that_names_no_place_is_refused(bad):
    with pytest.raises(ValueError):
        table_identity(bad)


def test_identity_is_a_value():
    a = table_identity("s3a://b/t")
    assert a == TableIdentity("s3://b/t") and str(a) == "s3://b/t" and a.local_path is None
    assert hash(a) == hash(TableIdentity("s3://b/t"))


def test_delta_rs_readers_open_one_table_however_it_is_spelled(tmp_path, monkeypatch):
    import pyarrow as pa

    folder = tmp_path / "runs"
    deltalog.append(str(folder), pa.table({"x": [1, 2]}))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alias").symlink_to(folder)
    for spelling in ("runs", "./runs/", f"file://{folder}", f"file:{tmp_path}/x/../runs", "alias"):
        snap = deltalog.snapshot(spelling)
        assert snap is not None and snap.version == 0 and snap.table_id
        assert deltalog.read(spelling, ["x"]).num_rows == 2
    deltalog.append("./runs/", pa.table({"x": [3]}))  # the runs table appended through another spelling
    assert deltalog.version(str(folder)) == 1


def test_a_recreated_table_has_another_delta_table_id(tmp_path):
    import shutil

    import pyarrow as pa

    folder = str(tmp_path / "t")
    deltalog.append(folder, pa.table({"x": [1]}))
    first = deltalog.snapshot(folder)
    shutil.rmtree(folder)
    deltalog.append(folder, pa.table({"x": [1]}))
    second = deltalog.snapshot(folder)
    assert first.version == second.version == 0
    assert first.table_id != second.table_id


def test_delta_rs_readers_refuse_a_literal_percent_escape_with_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"serve.table: .*%20.*delta-rs decodes"):
        deltalog.snapshot(str(tmp_path / "a%20b"), key="serve.table")
