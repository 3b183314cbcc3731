"""Deployment targets: spark-submit, Kubernetes (SparkApplication + Triton sidecars), the standalone cluster, Airflow scheduling, backfills."""
