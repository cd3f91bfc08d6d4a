"""Cluster configurations pass Ray's own validation; a search runs as a Ray job on a real head node."""

import os
import signal
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _submit(cmd, env, deadline):
    """``ray job submit``, retried while the fresh head (or its job agent) is still starting."""
    while True:
        job = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
        starting = any(m in job.stderr + job.stdout for m in ("No available agent", "Failed to connect"))
        if job.returncode == 0 or not starting or time.time() > deadline:
            return job
        time.sleep(2)


@pytest.mark.xdist_group("ray")
def test_search_as_a_ray_job_on_a_head_node(tmp_path, tiny_models):
    ray = str(Path(sys.executable).parent / "ray")
    # Token authentication is on by default for local clusters in Ray 2.60; this test cluster is on loopback.
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    port, dashboard = "6390", "8275"
    # The agents' own ports: free ones, not Ray's defaults, which another Ray instance on this machine (a
    # benchmark, a notebook) may hold; the job server answers "No available agent" while its agent cannot bind.
    agent_ports = [f"--{flag}={_free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                           "runtime-env-agent-port", "metrics-export-port")]
    # --block keeps `ray start` in the foreground: stopping it stops this head only, not other Ray instances.
    head = subprocess.Popen([ray, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dashboard}", "--include-dashboard=true", "--disable-usage-stats",
                             *agent_ports],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        teacher, supernet = tiny_models
        out = tmp_path / "run"
        job = _submit(
            [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--", sys.executable, "-m",
             "nas.search", "--space", str(ROOT / "tests/spaces/tiny_inception.yaml"), "--budget", "30M",
             "--teacher", str(teacher), "--supernet", str(supernet), "--trials", "3", "--out", str(out),
             "--address", f"127.0.0.1:{port}", "--no-progress", "--finetune-steps", "0"], env, time.time() + 300)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout.lower()
        table = pd.read_csv(out / "trials.csv")
        assert len(table) == 3 and (table["status"] == "ok").all()
        search = [sys.executable, "-m", "nas.search", "--space", str(ROOT / "tests/spaces/tiny_inception.yaml"),
                  "--budget", "30M", "--teacher", str(teacher), "--supernet", str(supernet), "--trials", "1",
                  "--no-progress"]
        # the dashboard's port is not the cluster's: one line at once instead of a search waiting forever
        wrong = subprocess.run([*search, "--out", str(tmp_path / "wrong"), "--address", f"127.0.0.1:{dashboard}"],
                               capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
        assert wrong.returncode == 2 and "answers HTTP" in wrong.stderr, wrong.stderr[-2000:]
        assert len(wrong.stderr.strip().splitlines()) == 1 and not (tmp_path / "wrong").exists()
        # GPUs this cluster has not and cannot get (no autoscaler): refused once connected
        gpus = subprocess.run([*search, "--out", str(tmp_path / "gpus"), "--address", f"127.0.0.1:{port}",
                               "--gpus-per-trial", "1"], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        assert gpus.returncode == 2 and "has 0 GPU(s) now and it has no autoscaler" in gpus.stderr, gpus.stderr[-2000:]
        assert "Traceback" not in gpus.stderr
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
