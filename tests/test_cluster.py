"""Cluster configurations pass Ray's own validation; a search runs as a Ray job on a real head node."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "onprem.yaml"])
def test_cluster_configs_pass_ray_validation(name):
    config = yaml.safe_load((ROOT / "cluster" / name).read_text())
    validate_config(prepare_config(config))  # what `ray up` checks before it launches anything


def test_gpu_cluster_has_gpu_workers_and_installs_the_project():
    config = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["node_config"]["InstanceType"].startswith(("g", "p")) and worker["max_workers"] > worker["min_workers"]
    assert any("pip install -e ." in c for c in config["setup_commands"])


@pytest.mark.xdist_group("ray")
def test_search_as_a_ray_job_on_a_head_node(tmp_path, tiny_models):
    ray = str(Path(sys.executable).parent / "ray")
    # Token authentication is on by default for local clusters in Ray 2.60; this test cluster is on loopback.
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    port, dashboard = "6390", "8275"
    started = subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
                              "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
                              "--disable-usage-stats"], capture_output=True, text=True, env=env)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        teacher, supernet = tiny_models
        out = tmp_path / "run"
        job = subprocess.run(
            [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--", sys.executable, "-m",
             "nas.search", "--space", str(ROOT / "tests/spaces/tiny_inception.yaml"), "--budget", "30M",
             "--teacher", str(teacher), "--supernet", str(supernet), "--trials", "3", "--out", str(out),
             "--address", f"127.0.0.1:{port}", "--no-progress"],
            capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout.lower()
        table = pd.read_csv(out / "trials.csv")
        assert len(table) == 3 and (table["status"] == "ok").all()
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)
        time.sleep(1)
