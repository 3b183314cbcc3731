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

# -- where a streamed row came from (``scoring stream``) -----------------------------------------------------------

SOURCE_VERSION_FROM = "source_version_from"
"""Delta source: the oldest source table version the row's micro-batch read (with :data:`INPUT_VERSION`, the newest:
the micro-batch's version range)."""

SOURCE_TOPIC = "source_topic"
"""Kafka source: the topic of the row's record."""

SOURCE_PARTITION = "source_partition"
"""Kafka source: the partition of the row's record."""

SOURCE_OFFSET = "source_offset"
"""Kafka source: the offset of the row's record."""

EVENT_TIME = "event_time"
"""Stream: when the row's event happened, as far as the source knows: the Kafka record's timestamp, the Delta source's
``stream.event_time`` column, or the commit time of the source version that added the row. Lag is measured from it."""
