"""Entry point for ``spark-submit``: the same job config and ``--set`` overrides as ``scoring run``.

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \\
        --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \\
        "$(python -c 'import scoring.spark_entry as m; print(m.__file__)')" conf/jobs/demo.yaml --set input.version=0

``scoring submit CONFIG --print`` prints that command for this installation. The run summary is printed as one JSON
line prefixed ``SCORING_SUMMARY``, and written to ``--summary-json`` if given. Exit status: 0 on success, 1 on a
failed run, 2 on a bad config; the error message (not a Spark stack) is the last thing printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scoring.spark_entry", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML job config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--summary-json", type=Path, help="also write the run summary to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from scoring import load_job_config, run
    from scoring.errors import ScoringError

    try:
        summary = run(load_job_config(args.config, args.overrides))
    except ScoringError as e:
        print(f"scoring error: {e}", file=sys.stderr, flush=True)  # noqa: T201 - this is a command-line entry point
        return e.exit_code
    payload = json.dumps(summary.to_dict(), default=str)
    if args.summary_json:
        args.summary_json.write_text(payload)
    print(f"SCORING_SUMMARY {payload}", flush=True)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
