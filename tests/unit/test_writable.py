"""The writability rule (scoring.core.writable), without Spark: Spark's partition-path escaping, the byte limits of a
local file system and of an object store, and which casts into an existing output column are checked per row.

EDGE_CASES is shared with tests/integration/test_unwritable_rows.py, which holds Spark's compiled expression (and
what Spark actually writes) to the same answers."""

from __future__ import annotations

import pytest

from scoring.core import writable
from scoring.core.writable import WriteRule, cast_kind, escape_path_name, partition_segment

# (partition value of column "ds", why it cannot be written on a local file system: None, "segment" or "nul")
EDGE_CASES: list[tuple[str | None, str | None]] = [
    (None, None),  # __HIVE_DEFAULT_PARTITION__
    ("", None),  # also the default partition
    ("2026-11-01", None),
    ("x" * 252, None),  # ds= + 252 = 255 bytes: the longest name there is
    ("x" * 253, "segment"),  # 256 bytes
    ("x" * 300, "segment"),  # the record
    ("é" * 126, None),  # 252 bytes in 126 characters
    ("é" * 127, "segment"),  # 254 bytes + ds= : over, in only 127 characters
    ("日" * 84, None),  # 3 bytes each: 252
    ("😀" * 63, None),  # 4 bytes each: 252
    ("😀" * 64, "segment"),
    (":" * 84, None),  # each escaped as %3A: 252 bytes from 84 characters
    (":" * 85, "segment"),  # 255 + 3
    ("/" * 100, "segment"),
    ("a b<>|}`!$", None),  # not escaped on Linux
    ("a\x00b", "nul"),  # not escaped by Spark, refused by every file system
    ("a\nb\tc\x7f", None),
]


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain", "plain"),
        ("a:b", "a%3Ab"),
        ("a/b", "a%2Fb"),
        ("100%", "100%25"),
        ("k=v", "k%3Dv"),
        ("\x01\x1f\x7f", "%01%1F%7F"),
        ("\"#'*?[\\]^{", "%22%23%27%2A%3F%5B%5C%5D%5E%7B"),
        (" <>|}`!$&()+,;@~", " <>|}`!$&()+,;@~"),  # Spark leaves these as they are (on a non-Windows host)
        ("é日😀", "é日😀"),
        ("a\x00b", "a\x00b"),
    ],
)
def test_escaping_is_sparks_partition_path_escaping(text, escaped):
    assert escape_path_name(text) == escaped


def test_null_and_empty_values_are_the_default_partition():
    assert partition_segment("ds", None) == partition_segment("ds", "") == "ds=__HIVE_DEFAULT_PARTITION__"
    assert partition_segment("a:b", "c") == "a%3Ab=c"


@pytest.mark.parametrize(("value", "problem"), EDGE_CASES, ids=[f"case{i}" for i in range(len(EDGE_CASES))])
def test_a_local_table_refuses_exactly_the_segments_over_255_bytes_and_nul(value, problem, tmp_path):
    rule = WriteRule.for_table(str(tmp_path / "out"), ["ds"])
    found = rule.path_problem({"ds": value})
    if problem is None:
        assert found is None
    elif problem == "segment":
        size = writable.utf8_len(partition_segment("ds", value))
        assert found == writable.segment_reason("ds", size, 255) and size > 255
    else:
        assert found == writable.nul_reason("ds")


def test_an_object_store_has_no_segment_limit_but_a_1024_byte_key():
    prefix = "lake/" + "p" * 95  # 100 bytes of key prefix
    rule = WriteRule.for_table(f"s3a://Bucket/{prefix}/", ["ds", "hour"])
    assert not rule.is_local and rule.segment_max_bytes is None
    # the key: prefix / ds=<v> / hour=7 / <file name (80)>, at most 1,024 bytes
    budget = 1024 - 100 - 1 - writable.DATA_FILE_NAME_BYTES
    assert rule.path_budget_bytes == budget
    room = budget - len("/hour=7/") - len("ds=")
    assert rule.path_problem({"ds": "x" * room, "hour": "7"}) is None  # a 300-byte segment is fine on S3
    assert room > 300
    found = rule.path_problem({"ds": "x" * (room + 1), "hour": "7"})
    assert found == writable.path_reason(False, budget + 1, budget)
    assert rule.path_problem({"ds": "é" * (room // 2 + 1), "hour": "7"}) is not None  # bytes, not characters


def test_a_long_local_table_path_leaves_less_room_for_partition_segments(tmp_path):
    deep = tmp_path / ("d" * 200) / ("e" * 200)
    rule = WriteRule.for_table(str(deep), ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o"])
    assert rule.path_budget_bytes == 4095 - writable.utf8_len(str(deep)) - 1 - writable.DATA_FILE_NAME_BYTES
    values = {c: "v" * 250 for c in rule.partition_by}  # each segment 252 bytes: fine alone, too long together
    assert rule.path_problem(values).startswith("partition values too long for a data file's path")


def test_an_unpartitioned_table_without_casts_refuses_no_row(tmp_path):
    rule = WriteRule.for_table(str(tmp_path), [])
    assert not rule.can_fail and rule.path_problem({}) is None


@pytest.mark.parametrize(
    ("source", "target", "kind"),
    [
        ("bigint", "bigint", "same"),
        ("int", "bigint", "widen"),
        ("tinyint", "int", "widen"),
        ("bigint", "int", "narrow"),  # the key: a long beyond int's range
        ("int", "smallint", "narrow"),
        ("int", "double", "widen"),
        ("float", "double", "widen"),
        ("double", "float", "narrow"),
        ("double", "bigint", "narrow"),
        ("decimal(10,2)", "decimal(5,1)", "narrow"),
        ("bigint", "decimal(10,0)", "narrow"),
        ("string", "int", "parse"),
        ("string", "date", "parse"),
        ("string", "decimal(10,2)", "parse"),
        ("bigint", "string", "widen"),
        ("date", "string", "widen"),
        ("date", "timestamp", "widen"),
        ("timestamp", "date", "narrow"),
        ("boolean", "int", "refuse"),
        ("array<int>", "int", "refuse"),
        ("binary", "string", "refuse"),
        ("string", "binary", "refuse"),
    ],
)
def test_which_casts_into_an_existing_column_are_checked_per_row(source, target, kind):
    assert cast_kind(source, target) == kind


def test_the_rule_checks_only_the_columns_whose_types_differ_and_refuses_a_pair_that_never_casts(tmp_path):
    given = {"customer_id": "bigint", "ds": "string", "f": "double"}
    rule = WriteRule.for_table(
        str(tmp_path),
        ["ds"],
        given,
        {"customer_id": "int", "ds": "string", "f": "float"},
        columns=["customer_id", "ds"],
    )
    assert [(c.column, c.kind) for c in rule.casts] == [("customer_id", "narrow")]  # f is not a checked column
    assert rule.checked == rule.casts
    widened = WriteRule.for_table(
        str(tmp_path), [], {"customer_id": "int"}, {"customer_id": "bigint"}, columns=["customer_id"]
    )
    assert [c.kind for c in widened.casts] == ["widen"] and widened.checked == () and not widened.can_fail
    assert WriteRule.for_table(str(tmp_path), [], given, {"customer_id": "bigint"}, columns=["customer_id"]).casts == ()
    with pytest.raises(ValueError, match="customer_id"):
        WriteRule.for_table(
            str(tmp_path), [], {"customer_id": "boolean"}, {"customer_id": "int"}, columns=["customer_id"]
        )
