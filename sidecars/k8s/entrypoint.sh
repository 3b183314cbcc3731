#!/usr/bin/env bash
# Entry point of the scoring image (sidecars/k8s/Dockerfile) for Spark on Kubernetes.
#
# Spark starts the driver pod's container with `driver <spark-submit arguments>` and each executor pod's container
# with `executor`, passing what the executor needs in SPARK_* environment variables (Spark's Kubernetes pod contract:
# SPARK_DRIVER_BIND_ADDRESS, SPARK_EXECUTOR_MEMORY, SPARK_DRIVER_URL, SPARK_EXECUTOR_ID, SPARK_EXECUTOR_CORES,
# SPARK_APPLICATION_ID, SPARK_EXECUTOR_POD_IP, SPARK_RESOURCE_PROFILE_ID, SPARK_EXECUTOR_POD_NAME, SPARK_JAVA_OPT_*).
# Anything else runs as given (the export init container sets its own command and does not come here).
set -euo pipefail

: "${SPARK_HOME:?SPARK_HOME is not set}"
tini="${SCORING_TINI:-/usr/bin/tini}"  # overridable for tests of this script outside the image
classpath="${SPARK_HOME}/jars/*${SPARK_EXTRA_CLASSPATH:+:${SPARK_EXTRA_CLASSPATH}}"
if [ -n "${SPARK_CONF_DIR:-}" ]; then
  classpath="${SPARK_CONF_DIR}:${classpath}"
fi

case "${1:-}" in
  driver)
    shift
    exec "${tini}" -s -- "${SPARK_HOME}/bin/spark-submit" \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}" \
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS}" \
      --deploy-mode client \
      "$@"
    ;;
  executor)
    shift
    java_opts=()
    for name in $(compgen -v SPARK_JAVA_OPT_ || true); do
      java_opts+=("${!name}")
    done
    exec "${tini}" -s -- "${JAVA_HOME}/bin/java" \
      "${java_opts[@]}" \
      -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
      -cp "${classpath}:${PWD}" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "${SPARK_DRIVER_URL}" \
      --executor-id "${SPARK_EXECUTOR_ID}" \
      --cores "${SPARK_EXECUTOR_CORES}" \
      --app-id "${SPARK_APPLICATION_ID}" \
      --hostname "${SPARK_EXECUTOR_POD_IP}" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" \
      --podName "${SPARK_EXECUTOR_POD_NAME}"
    ;;
  *)
    exec "$@"
    ;;
esac
