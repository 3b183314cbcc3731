"""Entry point for ``spark-submit``: the same job config and ``--set`` overrides as ``scoring run``.

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \\
        --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \\
        "$(python -c 'import scoring.deploy.spark_submit as m; print(m.__file__)')" conf/jobs/demo.yaml --set input.version=0

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
it in the driver pod's status, where the Airflow task reads it (:func:`scoring.deploy.outcome.driver_outcome`).

On Kubernetes, ``${VAR}`` in ``spark.conf`` reaches the driver as written, both in the config file and in the
SparkApplication's ``sparkConf`` (spark-submit's ``--conf``): ``scoring render k8s`` never writes a variable's value,
and neither spark-operator nor Spark expands ``${VAR}``. This entry point expands it from the driver's own
environment (where the pod spec put it, from a Secret) before the Spark session is built, and hands the expanded
settings to the session, so that the text ``${VAR}`` never becomes a setting's value. A variable unset there stops the
run with a config error (exit 2) naming the variable and the setting.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger("scoring.deploy.spark_submit")

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
    from scoring.deploy import outcome

    path = Path(os.environ.get(outcome.TERMINATION_LOG_ENV) or outcome.TERMINATION_LOG)
    if not (path.is_file() and os.access(path, os.W_OK)):
        return None
    try:
        path.write_text(outcome.termination_message(record))
    except OSError as e:
        _LOGGER.warning("could not write the termination message to %s: %s", path, e)
        return None
    return path


def submitted_spark_conf() -> dict[str, str]:
    """The Spark settings spark-submit started this driver with (its ``--conf``: on Kubernetes, the SparkApplication's
    ``sparkConf``); empty when this process was not started by spark-submit."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return {}
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # connects to spark-submit's JVM; starts nothing
    return dict(SparkConf().getAll())


def expand_spark_conf(conf: Mapping[str, str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings of `conf` whose values use ``${VAR}`` / ``${VAR:-default}`` / ``$${`` (the job config's syntax),
    expanded from `environ` (default: this process's environment); other settings are left out. A ``${`` of another
    form (Spark's own ``${env:VAR}``) is left as it is. Raises a :class:`~scoring.errors.ConfigError` naming the
    setting and the variable when one is unset and has no default."""
    from scoring.config import _ENV
    from scoring.errors import ConfigError

    environ = os.environ if environ is None else environ
    expanded = {}
    for key, value in conf.items():

        def sub(m, key=key) -> str:
            if m["escape"]:
                return m[0][1:]
            name = m["name"]
            if name is None:
                return m[0]
            if name in environ:
                return environ[name]
            if m["default"] is not None:
                return m["default"]
            raise ConfigError(
                f"spark.conf {key}: environment variable {name} is not set in the driver's environment",
                hint=f"give the driver pod {name} (kubernetes.secret_env.{name} names a Secret's key, or "
                "kubernetes.env_from_secrets a Secret holding it), or write ${" + name + ":-default}",
            )

        new = _ENV.sub(sub, value)
        if new != value:
            expanded[key] = new
    return expanded


def with_spark_conf_from_environment(config):
    """`config` with ``spark.conf`` completed for the session: the settings spark-submit was given that use
    ``${VAR}`` (the config's own are expanded already, by the loader), expanded from this environment. The session
    built from `config` then overrides the text spark-submit holds with the values. Settings spark-submit used before
    this code runs (:data:`scoring.deploy.k8s_env.READ_BEFORE_THE_DRIVER_RUNS`, which ``scoring render k8s`` keeps free of
    ``${VAR}``) are left alone: nothing here could change them."""
    from scoring.deploy.k8s_env import READ_BEFORE_THE_DRIVER_RUNS

    submitted = {k: v for k, v in submitted_spark_conf().items() if not k.startswith(READ_BEFORE_THE_DRIVER_RUNS)}
    expanded = expand_spark_conf(submitted)
    if not expanded:
        return config
    conf = {**expanded, **config.spark.conf}
    return config.model_copy(update={"spark": config.spark.model_copy(update={"conf": conf})})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scoring.deploy.spark_submit", description=__doc__.split("\n\n")[0])
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
        config = with_spark_conf_from_environment(load_job_config(args.config, args.overrides))
        if args.stream:
            summary = _stream(config, args.available_now)
        else:
            summary = run(config)
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
