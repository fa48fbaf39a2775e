"""The cohort recipes in deploy/, tried where they can be: the Kubernetes Indexed Job against Kubernetes' own schema,
the one-shard-per-GPU script on the CPU. (test/slurm_test.sh submits deploy/slurm-array.sbatch to a real Slurm.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import gc_input

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_indexed_job_is_valid_kubernetes_and_shards_by_its_completions(version):
    job = yaml.safe_load((DEPLOY / "k8s-indexed-job.yaml").read_text())
    kubernetes_validate.validate(job, version, strict=True)  # raises on anything the schema does not allow
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    count = {e["name"]: e["value"] for e in container["env"]}["PANTHER_SHARD_COUNT"]
    assert int(count) == spec["completions"]  # the shard count must be the Job's completions
    assert "--skip-existing" in container["args"] and "--records" in container["args"]


def test_a_misspelled_field_fails_the_schema():
    job = yaml.safe_load((DEPLOY / "k8s-indexed-job.yaml").read_text())
    job["spec"]["completionMod"] = job["spec"].pop("completionMode")
    with pytest.raises(kubernetes_validate.ValidationError, match="completionMod"):
        kubernetes_validate.validate(job, "1.33.0", strict=True)


def test_multi_gpu_script_on_the_cpu_predicts_every_case_once_and_resumes(workspace, tmp_path):
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {f"c{i}.mha": dict(shape_zyx=(8, 24, 28),
                                                                         spacing_xyz=(1, 1, 3), seed=40 + i)
                                                        for i in range(5)})
    output = tmp_path / "output"
    # the script calls `panther-ensemble` as an installed command: this interpreter's, whether or not its venv is active
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "GPUS": "2", "DEVICE": "cpu", "PATH": path}
    command = [str(DEPLOY / "multi-gpu.sh"), str(input_dir), str(output), "--ensemble", str(workspace.mixed_spec),
               "--weights", str(workspace.weights), "--budget", "0"]
    first = subprocess.run(command, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr + first.stdout
    masks = sorted(p.name for p in output.rglob("*.mha"))
    assert masks == [f"c{i}.mha" for i in range(5)]
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert sorted(r["case"] for r in records) == masks and {r["shard"] for r in records} == {"0/2", "1/2"}
    assert first.stdout.startswith("5 case(s) in 5 record(s)")
    second = subprocess.run(command, env=env, capture_output=True, text=True)  # the same line again: resumes
    assert second.returncode == 0 and "10 record(s)" in second.stdout and "5 skip(s)" in second.stdout
