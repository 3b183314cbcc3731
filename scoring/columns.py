"""The columns `scoring` adds to every output row: the lineage contract.

Every predictions table carries, next to the key column(s), the partition column(s) and the prediction column(s),
these columns. Together they answer, for any row: which model produced it, from which input snapshot, in which run.
They are defined once, by :func:`scoring.core.stamp.lineage_columns` (fields and values), and applied by
:func:`scoring.core.stamp.stamp_batch` (Arrow) or the Spark glue (literals), so their names live only here.
"""

MODEL_NAME = "model_name"
"""Registered model name in the MLflow registry, e.g. ``churn``."""

MODEL_VERSION = "model_version"
"""Registered model version the run resolved (an alias such as ``@champion`` is resolved once, at the start), as a string."""

MODEL_URI = "model_uri"
"""The resolved, immutable model URI, ``models:/<name>/<version>``; never an alias."""

INPUT_VERSION = "input_version"
"""Delta version of the input table snapshot that was scored (pinned at the start of the run)."""

SCORING_RUN_ID = "scoring_run_id"
"""Id of the run that wrote the row; the same id is in the Delta commit's ``userMetadata`` and in the run summary."""

SCORED_AT = "scored_at"
"""UTC timestamp of the run's start, the same for every row of a run."""

LINEAGE = (MODEL_NAME, MODEL_VERSION, MODEL_URI, INPUT_VERSION, SCORING_RUN_ID, SCORED_AT)
"""All lineage columns, in the order they are written."""

PREDICTION = "prediction"
"""Name of the prediction column when the model has a single output."""
