"""Trials that train: a lost node or a killed driver continues a trial from its checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

pytestmark = pytest.mark.xdist_group("ray")  # one Ray instance at a time on two cores

STEPS, LONG, EVERY = 8, 16, 2


def kd_search(tiny_models, out, *extra, steps=STEPS):
    teacher, _ = tiny_models
    return [sys.executable, "-m", "nas.search", "--method", "kd", "--space", "tests/spaces/tiny_resnet.yaml",
            "--teacher", str(teacher), "--budget", "3M", "--out", str(out), "--no-progress", "--steps", str(steps),
            "--checkpoint-every", str(EVERY), "--batch-size", "2", "--crop", "32", *extra]


def progress(out, trial_id):
    path = out / "trials" / trial_id / "progress.csv"
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["step", "restored_at"])


def checkpointed(out):
    """Trials with a checkpoint and at least one progress report."""
    found = []
    for path in (out / "trials").glob("*/trial.json") if (out / "trials").exists() else []:
        try:
            info = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if info.get("checkpoint") and len(progress(out, path.parent.name)):
            found.append(path.parent.name)
    return found


def redone_steps(frame):
    """Steps reported again after a restore (a trial restarted from scratch would redo them all)."""
    steps = frame["step"].tolist()
    return sum(max(0, steps[i - 1] - steps[i] + EVERY) for i in range(1, len(steps)) if steps[i] <= steps[i - 1])


def running(out):
    """Training trials with a checkpoint that have not finished."""
    found = []
    for trial_id in checkpointed(out):
        info = json.loads((out / "trials" / trial_id / "trial.json").read_text())
        if info.get("status") == "running":
            found.append(trial_id)
    return found


def test_a_training_trial_continues_from_its_checkpoint_when_its_node_is_lost(tmp_path, tiny_models, monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("NAS_TRIAL_STEP_SLEEP", "2")  # the nodes' workers inherit it
    # The head runs no trial; two one-CPU nodes run one trial each, and one of them is taken away.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        doomed = cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        proc = subprocess.Popen(kd_search(tiny_models, out, "--trials", "2", "--max-failures", "3", "--address",
                                          cluster.address, steps=LONG),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and len(running(out)) < 2:
            time.sleep(0.2)
        assert len(running(out)) == 2  # both trials are mid-way, one on each node
        cluster.remove_node(doomed)  # the trial running there dies with it
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
        table = pd.read_csv(out / "trials.csv", dtype={"trial_id": str})
        assert len(table) == 2 and table["trial_id"].is_unique and (table["status"] == "ok").all()
        restored = {t: progress(out, t) for t in table["trial_id"]}
        restored = {t: p for t, p in restored.items() if p["restored_at"].notna().any()}
        assert len(restored) == 1, {t: progress(out, t).to_dict("list") for t in table["trial_id"]}
        frame = next(iter(restored.values()))
        assert frame["restored_at"].dropna().min() >= EVERY  # from its checkpoint, not from step 0
        assert redone_steps(frame) <= EVERY  # at most the chunk in flight when the node went
    finally:
        cluster.shutdown()


def test_resume_after_the_driver_is_killed_continues_training_trials(tmp_path, tiny_models):
    out = tmp_path / "run"
    proc = subprocess.Popen(kd_search(tiny_models, out, "--trials", "2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "NAS_TRIAL_STEP_SLEEP": "2"})
    deadline = time.time() + 300
    while time.time() < deadline and not checkpointed(out):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted = checkpointed(out)
    assert interrupted and not (out / "trials.csv").exists()
    done = subprocess.run([sys.executable, "-m", "nas.search", "--out", str(out), "--resume", "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "trials.csv", dtype={"trial_id": str})
    assert len(table) == 2 and table["trial_id"].is_unique and (table["status"] == "ok").all()
    for trial_id in interrupted:  # kept its id, continued from its checkpoint
        assert trial_id in set(table["trial_id"])
        frame = progress(out, trial_id)
        assert frame["restored_at"].dropna().min() >= EVERY and redone_steps(frame) <= EVERY
    info = json.loads((out / "run.json").read_text())
    assert len(info["resumes"]) == 1 and info["status"] == "finished" and not info.get("lost")
