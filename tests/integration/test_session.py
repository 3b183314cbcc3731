"""The Spark session a job runs in: a job's ``spark.conf`` that cannot take effect on a session that is already running
(a notebook's, spark-submit's) is a warning naming the key and the remedy, never dropped silently."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from scoring.adapters.spark import _try_set, delta_package, get_session
from scoring.engine.progress import HeldOutput

SPARK_LOGGER = "scoring.adapters.spark"


@pytest.fixture
def warned(caplog):
    """The warnings scoring's Spark glue logs during the test."""
    caplog.set_level(logging.WARNING, logger=SPARK_LOGGER)

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == SPARK_LOGGER and r.levelno == logging.WARNING]

    return messages


def test_a_static_setting_for_a_running_session_is_a_warning_naming_the_key_and_the_remedy(spark, warned):
    assert get_session(conf={"spark.driver.memory": "13g"}) is spark
    [message] = warned()
    assert "spark.conf spark.driver.memory=13g is not applied" in message
    assert f"with spark.driver.memory={spark.conf.get('spark.driver.memory')}" in message
    assert "spark-submit --conf spark.driver.memory=13g" in message
    assert spark.conf.get("spark.driver.memory") != "13g"


def test_packages_the_running_session_lacks_are_a_warning_and_those_it_has_are_not(spark, warned):
    get_session(conf={"spark.jars.packages": delta_package()})
    assert warned() == []
    get_session(conf={"spark.jars.packages": f"{delta_package()},org.example:absent_2.13:1.0"})
    [message] = warned()
    assert "spark.conf spark.jars.packages=" in message and "org.example:absent_2.13:1.0" in message


def test_settings_a_running_session_takes_or_already_has_pass_without_a_warning(spark, warned):
    extensions = spark.conf.get("spark.sql.extensions")  # static, and already what the job asks for
    get_session(conf={"spark.sql.extensions": extensions, "spark.scoring.test.marker": "on"})
    try:
        assert warned() == []
        assert spark.conf.get("spark.scoring.test.marker") == "on"
    finally:
        spark.conf.unset("spark.scoring.test.marker")


def test_under_spark_submit_a_setting_the_jvm_was_not_started_with_is_a_warning(spark, warned):
    """spark-submit's JVM is up before the job's session is built: the session's conf shows the job's value, the JVM
    keeps the one it was started with (its system properties)."""
    started_with = spark.sparkContext._jvm.java.lang.System.getProperty("spark.driver.memory")
    assert started_with is not None
    _try_set(spark, "spark.driver.memory", started_with, started=False)
    _try_set(spark, "spark.sql.shuffle.partitions", "7", started=False)  # applied with the new session: not checked
    assert warned() == []
    _try_set(spark, "spark.driver.memory", "13g", started=False)
    [message] = warned()
    assert "spark.driver.memory=13g is not applied" in message and f"with spark.driver.memory={started_with}" in message


def _child(held: HeldOutput, script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stderr=held.fd, text=True)


def test_what_a_child_says_while_starting_is_shown_only_when_it_fails_to_start(capfd):
    held = HeldOutput()
    child = _child(held, "import sys; sys.stderr.write('Error: no such option\\n'); sys.exit(1)")
    assert child.wait(timeout=60) == 1
    held.failed()
    assert capfd.readouterr().err == "Error: no such option\n"


def test_once_a_child_started_what_it_says_passes_through(capfd):
    held = HeldOutput()
    child = _child(held, "import sys; input(); sys.stderr.write('ERROR later\\n')")
    held.started()
    child.communicate("go\n", timeout=60)
    held._thread.join(timeout=10)  # the pipe's end: the child exited and our copy of its end is closed
    assert capfd.readouterr().err == "ERROR later\n"
