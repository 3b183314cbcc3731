"""Put the Delta jars (and any ``SPARK_PACKAGES``) on the image's Spark classpath, at build time (sidecars/k8s/Dockerfile).

They are resolved the way a local run resolves them, through Spark's own ``spark.jars.packages`` into a fresh Ivy
folder, and copied into ``$SPARK_HOME/jars``, except the jars of artifacts that Spark already ships in another
version (Delta 4.4 brings its own hadoop-client, parquet, jackson, log4j...). At run time Spark's copies would come
first on the classpath anyway; two versions of one artifact in ``jars/`` would instead load in an arbitrary order.

    python bake_jars.py            # SPARK_HOME set; SPARK_PACKAGES: more Maven coordinates, comma-separated
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

_VERSION = re.compile(r"-\d.*\.jar$")


def artifact(jar_name: str, ivy: bool = False) -> str:
    """``hadoop-client-api-3.5.0.jar`` -> ``hadoop-client-api``; Ivy names are ``<org>_<artifact>-<version>.jar``."""
    name = jar_name.split("_", 1)[1] if ivy else jar_name
    return _VERSION.sub("", name)


def jars_to_add(resolved: Iterable[str], shipped: Iterable[str]) -> list[str]:
    """The resolved (Ivy) jar names whose artifact Spark does not already ship."""
    have = {artifact(name) for name in shipped}
    return sorted(name for name in resolved if artifact(name, ivy=True) not in have)


def main() -> int:
    from pyspark.sql import SparkSession

    from scoring.adapters.spark import delta_package

    spark_jars = Path(os.environ["SPARK_HOME"]) / "jars"
    packages = ",".join(filter(None, [delta_package(), os.environ.get("SPARK_PACKAGES", "")]))
    with tempfile.TemporaryDirectory(prefix="ivy-") as ivy:
        builder = SparkSession.builder.master("local[1]").config("spark.jars.packages", packages)
        builder.config("spark.jars.ivy", ivy).getOrCreate().stop()
        resolved = [p.name for p in (Path(ivy) / "jars").glob("*.jar")]
        added = jars_to_add(resolved, [p.name for p in spark_jars.glob("*.jar")])
        if not any(name.startswith("io.delta_delta-spark_") for name in added):
            sys.stderr.write(f"the Delta jars did not resolve: {sorted(resolved)}\n")
            return 1
        for name in added:
            shutil.copy2(Path(ivy) / "jars" / name, spark_jars / name)
    sys.stdout.write(f"added to {spark_jars}: {', '.join(added)}\n")
    sys.stdout.write(f"left out (Spark ships them): {', '.join(sorted(set(resolved) - set(added)))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
