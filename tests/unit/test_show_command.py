"""`scoring show` on real Delta tables written with delta-rs (no Spark)."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
from deltalake import CommitProperties, write_deltalake
from typer.testing import CliRunner

from scoring.cli import app


def test_show_prints_rows_version_and_history_with_user_metadata(tmp_path):
    table = pa.table({"id": [1, 2, 3], "ds": ["2026-11-01", "2026-11-01", "2026-11-02"]})
    meta = json.dumps({"scoring_run_id": "run-1"})
    write_deltalake(tmp_path / "t", table, commit_properties=CommitProperties(custom_metadata={"userMetadata": meta}))
    done = CliRunner().invoke(app, ["show", str(tmp_path / "t"), "--limit", "2"])
    assert done.exit_code == 0, done.output
    assert f"{tmp_path / 't'} version 0, 2 columns" in done.output
    assert " id         ds" in done.output and "3 2026-11-02" not in done.output  # --limit 2
    assert f"v0 WRITE {meta}" in done.output


def test_a_table_too_wide_for_the_terminal_is_shown_one_row_per_block(tmp_path):
    wide = pa.table({f"column_{i:02d}": [f"value-{i}" * 4] for i in range(12)})
    write_deltalake(tmp_path / "wide", wide)
    done = CliRunner().invoke(app, ["show", str(tmp_path / "wide")])
    assert done.exit_code == 0, done.output
    assert "-- row 1 --" in done.output and "  column_11  value-11value-11" in done.output


def test_no_table_and_a_percent_escaped_path_are_clear_errors(tmp_path):
    missing = CliRunner().invoke(app, ["show", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "no Delta table at" in missing.output
    write_deltalake(tmp_path / "t", pa.table({"id": [1]}))
    shutil.copytree(tmp_path / "t", tmp_path / "a%20b" / "t")
    escaped = CliRunner().invoke(app, ["show", str(tmp_path / "a%20b" / "t")])
    assert escaped.exit_code == 2 and "contains '%20', which delta-rs decodes" in escaped.output


def test_debug_raises_the_error_a_command_would_have_turned_into_its_exit_code(tmp_path):
    from scoring.errors import ScoringError

    done = CliRunner().invoke(app, ["--debug", "show", str(tmp_path / "nothing")])
    assert isinstance(done.exception, ScoringError) and "no Delta table at" in str(done.exception)


def test_every_command_and_group_command_runs_inside_the_one_error_decorator():
    commands = [
        *app.registered_commands,
        *(c for g in app.registered_groups for c in g.typer_instance.registered_commands),
    ]
    assert len(commands) > 20
    unwrapped = [c.callback.__name__ for c in commands if not hasattr(c.callback, "__wrapped__")]
    assert unwrapped == []


def test_help_imports_no_spark_mlflow_or_triton():
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from scoring.cli import app\n"
        "for args in (['--help'], ['run', '--help'], ['stream', '--help'], ['serve', '--help'], ['sidecar', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "heavy = ('pyspark', 'mlflow', 'tritonclient', 'onnxruntime', 'great_expectations', 'kafka', 'redis', 'fastapi')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
