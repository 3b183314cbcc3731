"""The rendered pod templates as Spark itself reads them: spark-operator writes ``spec.executor.template`` (and the
driver's) to a file, and Spark loads it into its Kubernetes model (fabric8, bundled in the pyspark wheel) before
adding the executor. A field that model does not know would be dropped there without a word: for the Triton sidecar,
losing ``restartPolicy: Always`` would turn it into an init container that never ends, and no executor would start.

This loads each rendered template through the fabric8 model of the installed pyspark (a JVM, no cluster) and checks
that it comes back whole.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from scoring.config import load_job_config
from scoring.deploy import kubernetes

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "tests" / "data" / "golden").glob("*/jobs/*.yaml"))

READ_BACK = textwrap.dedent(
    """\
    import io.fabric8.kubernetes.api.model.Container;
    import io.fabric8.kubernetes.api.model.Pod;
    import io.fabric8.kubernetes.api.model.PodBuilder;
    import io.fabric8.kubernetes.client.utils.Serialization;
    import java.io.FileInputStream;
    import java.nio.file.Files;
    import java.nio.file.Path;
    import java.util.ArrayList;
    import java.util.List;

    /** Each pod template as Spark reads it (fabric8's typed model, then copied through a PodBuilder as Spark's
     *  feature steps do), written back as YAML, with a line per container: what the model read as typed fields and
     *  what it kept only as untyped "additional properties" (fields it does not know). */
    public class ReadBack {
      public static void main(String[] args) throws Exception {
        for (String name : args) {
          Pod pod = new PodBuilder(Serialization.unmarshal(new FileInputStream(name), Pod.class)).build();
          Files.writeString(Path.of(name + ".back"), Serialization.asYaml(pod));
          List<String> report = new ArrayList<>();
          report.add("spec\t-\t" + pod.getSpec().getAdditionalProperties().keySet());
          List<Container> all = new ArrayList<>(pod.getSpec().getInitContainers());
          all.addAll(pod.getSpec().getContainers());
          for (Container c : all) {
            report.add(c.getName() + "\t" + c.getRestartPolicy() + "\t" + c.getAdditionalProperties().keySet());
          }
          Files.write(Path.of(name + ".report"), report);
        }
      }
    }
    """
)


def test_spark_s_kubernetes_model_keeps_every_rendered_pod_template_whole(tmp_path):
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    if not any(jars.glob("kubernetes-model-core-*.jar")):
        pytest.skip(f"no fabric8 Kubernetes model in {jars}")
    files = []
    for job in JOBS:
        pinned = kubernetes.PinnedModel("m", "1", "models:/m/1")
        application = kubernetes.render(load_job_config(job), job, model=pinned).application
        for role in ("driver", "executor"):
            path = tmp_path / f"{job.stem}-{role}.yaml"
            path.write_text(
                yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", **application["spec"][role]["template"]})
            )
            files.append(path)
    source = tmp_path / "ReadBack.java"
    source.write_text(READ_BACK)
    subprocess.run(
        ["java", "-cp", f"{jars}/*", str(source), *map(str, files)], check=True, timeout=180, capture_output=True
    )
    sidecars = 0
    for path in files:
        written = yaml.safe_load(path.read_text())
        assert yaml.safe_load(Path(f"{path}.back").read_text()) == written, path.name
        for line in Path(f"{path}.report").read_text().splitlines():
            name, restart_policy, untyped = line.split("\t")
            assert untyped == "[]", f"{path.name}: {name} has fields Spark's model does not know: {untyped}"
            if name == kubernetes.TRITON_CONTAINER:
                assert restart_policy == "Always", path.name  # a typed field: Spark keeps it
                sidecars += 1
    assert sidecars == 2 * sum("backend: triton" in job.read_text() for job in JOBS)
