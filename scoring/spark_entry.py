"""Entry point for ``spark-submit``: the same job config and ``--set`` overrides as ``scoring run``.

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \\
        --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \\
        "$(python -c 'import scoring.spark_entry as m; print(m.__file__)')" conf/jobs/demo.yaml --set input.version=0

``scoring submit CONFIG --print`` prints that command for this installation. The run summary is printed as one JSON
line prefixed ``SCORING_SUMMARY``, and written to ``--summary-json`` if given.

The exit status tells a scheduler whether a retry can help (:func:`scoring.errors.exit_code_for`): 0 success, 1 a
terminal failure, 2 a config error, 75 a transient failure. spark-submit exits with the driver's status, so the
Airflow task and the Kubernetes driver pod see the same number. On failure the error, not a Python or Java
traceback, is the last thing printed (``--debug`` or ``SCORING_DEBUG=1`` prints the traceback too), and an error
record::

    {"error": {"type": "InputError", "message": "...", "hint": "...", "transient": false, "exit_code": 1}}

is written to ``--summary-json`` (in place of the summary) and to the container's termination message file
(``/dev/termination-log``, or ``$SCORING_TERMINATION_LOG``) when that file exists and is writable: Kubernetes puts
it in the driver pod's status, where the Airflow task reads it (:func:`scoring.kubernetes.driver_outcome`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger("scoring.spark_entry")

DEBUG_ENV = "SCORING_DEBUG"
"""``SCORING_DEBUG=1``: print the traceback of a failure as well (as ``--debug``)."""


def _one_line(error: BaseException) -> str:
    """The first line of an exception's text; for a Py4J error, the Java exception's own ``toString`` (no stack)."""
    java = getattr(error, "java_exception", None)
    text = str(java) if java is not None else str(error)
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return (line[:497] + "...") if len(line) > 500 else line


def error_record(error: BaseException) -> dict[str, Any]:
    """``{"error": {type, message, hint, transient, exit_code}}`` for a failed run (JSON-ready)."""
    from scoring.errors import EXIT_TERMINAL, ScoringError, exit_code_for, is_transient

    if isinstance(error, ScoringError):
        return {
            "error": {
                "type": type(error).__name__,
                "message": error.message,
                "hint": error.hint,
                "transient": is_transient(error),
                "exit_code": exit_code_for(error),
                **({"gate": error.gate} if isinstance(getattr(error, "gate", None), str) else {}),
            }
        }
    return {
        "error": {
            "type": type(error).__name__,
            "message": _one_line(error),
            "hint": f"an unexpected error: run again with --debug (or {DEBUG_ENV}=1) for the traceback",
            "transient": False,
            "exit_code": EXIT_TERMINAL,
        }
    }


def _write(path: Path, text: str, what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        _LOGGER.warning("could not write the %s to %s: %s", what, path, e)


def write_termination_message(record: dict[str, Any]) -> Path | None:
    """Write `record` to the container's termination message file when it exists and is writable (in a Kubernetes
    pod); returns the path written, None elsewhere."""
    from scoring import kubernetes

    path = Path(os.environ.get(kubernetes.TERMINATION_LOG_ENV) or kubernetes.TERMINATION_LOG)
    if not (path.is_file() and os.access(path, os.W_OK)):
        return None
    try:
        path.write_text(kubernetes.termination_message(record))
    except OSError as e:
        _LOGGER.warning("could not write the termination message to %s: %s", path, e)
        return None
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scoring.spark_entry", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML job config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--summary-json", type=Path, help="also write the run summary (or the error record) here")
    parser.add_argument("--debug", action="store_true", help=f"print tracebacks too (or {DEBUG_ENV}=1)")
    parser.add_argument(
        "--stream", action="store_true", help="run the job's stream: section (as `scoring stream`) instead of a batch"
    )
    parser.add_argument("--available-now", action="store_true", help="with --stream: process what is there, then stop")
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from scoring import load_job_config, run
    from scoring.errors import ScoringError

    try:
        if args.stream:
            summary = _stream(load_job_config(args.config, args.overrides), args.available_now)
        else:
            summary = run(load_job_config(args.config, args.overrides))
    except Exception as e:  # noqa: BLE001 - every failure becomes an exit code and an error record
        record = error_record(e)
        if debug:
            traceback.print_exc()
        if args.summary_json:
            _write(args.summary_json, json.dumps(record, default=str), "error record")
        write_termination_message(record)
        if isinstance(e, ScoringError):
            line = f"scoring error: {e}"
        else:
            line = f"scoring error: unexpected {record['error']['type']}: {record['error']['message']}"
            if not debug:
                line += f" (run again with --debug or {DEBUG_ENV}=1 for the traceback)"
        print(line, file=sys.stderr, flush=True)  # noqa: T201 - this is a command-line entry point
        return int(record["error"]["exit_code"])
    payload = json.dumps(summary.to_dict(), default=str)
    if args.summary_json:
        _write(args.summary_json, payload, "summary")
    print(f"SCORING_SUMMARY {payload}", flush=True)  # noqa: T201
    return 0


def _stream(config, available_now: bool):
    """The stream, until it drains (`available_now`) or SIGTERM/SIGINT asks it to stop after the micro-batch in
    progress (what Kubernetes and YARN send a driver they stop)."""
    import signal
    import threading

    from scoring.modes.stream import run as run_stream

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return run_stream(config, available_now=available_now, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
