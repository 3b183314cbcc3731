"""spark_entry's failure contract without Spark: a config error gives exit code 2, one plain line, and the error
record in --summary-json and in the termination message file (when there is one)."""

from __future__ import annotations

import json

import yaml

from scoring.deploy import spark_submit as spark_entry
from scoring.errors import EXIT_CONFIG


def _bad_config(tmp_path):
    path = tmp_path / "job.yaml"
    tree = {"input": {"table": "/lake/in", "key": "id", "wher": "ds = 'x'"}, "model": {"uri": "models:/m/1"}}
    path.write_text(yaml.safe_dump({**tree, "output": {"table": "/lake/out"}}))
    return path


def test_a_config_error_exits_2_with_one_line_and_an_error_record(tmp_path, capsys, monkeypatch):
    termination = tmp_path / "termination-log"
    termination.write_text("")  # as the kubelet provides it in a pod
    monkeypatch.setenv("SCORING_TERMINATION_LOG", str(termination))
    summary = tmp_path / "runs" / "summary.json"

    code = spark_entry.main([str(_bad_config(tmp_path)), "--summary-json", str(summary)])

    assert code == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("scoring error: ") and "input.wher" in err and "Traceback" not in err
    record = json.loads(summary.read_text())
    assert set(record["error"]) == {"type", "message", "hint", "transient", "exit_code"}
    assert record["error"]["type"] == "ConfigError" and record["error"]["exit_code"] == EXIT_CONFIG
    assert record["error"]["transient"] is False and "input.wher" in record["error"]["message"]
    assert json.loads(termination.read_text()) == record


def test_no_termination_message_file_outside_a_pod(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-termination-log"
    monkeypatch.setenv("SCORING_TERMINATION_LOG", str(missing))
    assert spark_entry.main([str(_bad_config(tmp_path))]) == EXIT_CONFIG
    assert not missing.exists()
    assert spark_entry.write_termination_message({"error": {}}) is None


def test_debug_prints_the_traceback_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCORING_TERMINATION_LOG", str(tmp_path / "none"))
    monkeypatch.setenv("SCORING_DEBUG", "1")
    assert spark_entry.main([str(_bad_config(tmp_path))]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.rindex("scoring error: ") > err.index("Traceback")  # the plain error still comes last


def test_an_unexpected_error_record_holds_the_first_line_of_a_java_error():
    class FakeJava:  # what py4j's Py4JJavaError carries: the Java exception, whose toString has no stack
        def __str__(self):
            return "java.lang.IllegalStateException: boom"

    class Py4JLike(Exception):
        java_exception = FakeJava()

    record = spark_entry.error_record(Py4JLike("An error occurred while calling o1.x.\n: java.lang...\n\tat ..."))
    assert (
        record["error"]["type"] == "Py4JLike" and record["error"]["message"] == "java.lang.IllegalStateException: boom"
    )
    assert record["error"]["exit_code"] == 1 and record["error"]["transient"] is False
    plain = spark_entry.error_record(RuntimeError("first line\nsecond line"))
    assert plain["error"]["message"] == "first line"
