"""kd (Aguinaldo et al.): the uniformly scaled student, the frozen teacher, kd trials in a search and alone."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from nas.checkpoint import load_generator
from nas.data import load_task
from nas.methods.kd import GRID, KdObjective, kd_student, scaled_config
from nas.training import TrainSettings, Training
from spaces import UserError, load_space
from student_check import applies_to_a_photo

SR4X = "spaces/sr4x/{}.yaml"
TINY_KD = ["--steps", "4", "--checkpoint-every", "2", "--batch-size", "2", "--crop", "32"]


@pytest.mark.parametrize("name, target", [("resnet", 0.5e9), ("resnet", 1.1e9), ("inception", 0.4e9), ("agd", 1.2e9)])
def test_the_factor_is_the_largest_that_fits(name, target):
    space = load_space(SR4X.format(name))
    factor, config = kd_student(space, target)
    assert space.macs(config) <= target
    assert space.macs(scaled_config(space, factor + 1 / GRID)) > target  # the next grid step would not fit
    largest = space.max_config()
    for site in space.sites:
        if isinstance(largest[site.name], str):  # agd: the operator of the max config stays
            assert config[site.name].rstrip("0123456789") == largest[site.name].rstrip("0123456789")
        else:
            assert config[site.name] <= max(factor * largest[site.name], min(site.choices))


def test_a_target_no_scaled_student_meets_fails_clearly():
    space = load_space("tests/spaces/tiny_agd.yaml")  # operators stay res: the 1/32 student costs 1.98M
    with pytest.raises(UserError, match=r"kd: no uniformly scaled config of space 'tiny_agd' fits the target"):
        kd_student(space, 1.9e6)


def test_kd_trains_the_student_on_mse_to_a_frozen_teacher(tiny_models):
    teacher_path, _ = tiny_models
    teacher = load_generator(teacher_path).module
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    space = load_space("tests/spaces/tiny_resnet.yaml")
    settings = TrainSettings(steps=3, batch_size=2, crop=32, eval_every=3, checkpoint_every=3)
    objective = KdObjective(space, space.max_config(), teacher, settings, torch.device("cpu"), alpha=1.0,
                            teacher_path=str(teacher_path), discriminator=None, space_arg="tiny_resnet")
    start = {k: v.clone() for k, v in objective.student.state_dict().items()}
    training = Training(objective, load_task("sr4x"), settings, torch.device("cpu"), task_spec="sr4x")
    training.advance(3, evaluate=False)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(start[k], v) for k, v in objective.student.state_dict().items())
    # alpha = 1: the loss of a step is the MSE to the teacher's output, before the step's update
    x, y = training.batch(3)
    with torch.no_grad():
        expected = float(torch.nn.functional.mse_loss(objective.student(x), teacher(x)))
    assert objective.train_step(3, x, y) == pytest.approx(expected, rel=1e-5)


@pytest.mark.xdist_group("ray")
def test_kd_search_and_the_same_trial_alone(tmp_path, tiny_models):
    teacher, _ = tiny_models
    out = tmp_path / "run"
    search = subprocess.run(
        [sys.executable, "-m", "nas.search", "--method", "kd", "--space", "tests/spaces/tiny_resnet.yaml",
         "--teacher", str(teacher), "--budget", "3M", "--trials", "2", "--out", str(out), "--no-progress",
         "--storage", str(tmp_path / "storage"), *TINY_KD],
        capture_output=True, text=True, timeout=600)
    assert search.returncode == 0, search.stderr[-2000:]
    table = pd.read_csv(out / "trials.csv", dtype={"config": str, "trial_id": str})
    assert len(table) == 2 and (table["status"] == "ok").all() and table["feasible"].all()
    assert (table["macs_torchprofile"] <= 3_000_000).all() and table["weights"].str.endswith("student.pth").all()
    # students travel through Tune's storage: the worker's own folders are gone, the export works from storage
    assert table["weights"].str.startswith(str(tmp_path / "storage")).all()
    for trial_id in table["trial_id"]:
        worker_dir = json.loads((out / "trials" / trial_id / "trial.json").read_text())["worker_dir"]
        assert worker_dir and not (worker_dir.startswith(str(tmp_path / "storage")) or Path(worker_dir).exists())
    first = json.loads(table["params_json"].iloc[0])
    assert {json.loads(p)["target"] for p in table["params_json"]} >= {3e6}  # the first trial's target is the budget
    assert (out / "trials" / table["trial_id"].iloc[0] / "progress.csv").is_file() and first
    info = json.loads((out / "run.json").read_text())
    assert info["options"]["method"] == "kd" and info["options"]["method_options"]["steps"] == 4
    assert info["best"]["config"] in set(table["config"])
    # the front's students, fetched from Tune's storage, are drawn on the probe crops; no other trial is
    from nas.pareto import pareto_front

    members = set(pareto_front(table, budget=3_000_000).front_rows["trial_id"])
    assert {p.name for p in (out / "probes" / "trials").iterdir()} == members
    assert all((out / "probes" / "trials" / m / "student_3.png").is_file() for m in members)
    assert applies_to_a_photo(out / "best" / "model.pth", tmp_path) == (96, 96)  # sr4x: four times the input
    # the trial at the budget, run alone by nas.train student: the same weights (same seed, same threads)
    alone = subprocess.run(
        [sys.executable, "-m", "nas.train", "student", "--method", "kd", "--space", "tests/spaces/tiny_resnet.yaml",
         "--teacher", str(teacher), "--budget", "3M", "--out", str(tmp_path / "alone"), "--no-progress",
         "--device", "cpu", *TINY_KD], capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr[-2000:]
    at_budget = table[[json.loads(p)["target"] == 3e6 for p in table["params_json"]]].iloc[0]
    in_search = load_generator(at_budget["weights"]).module.state_dict()
    by_itself = load_generator(tmp_path / "alone" / "student" / "model.pth").module.state_dict()
    assert all(torch.equal(in_search[k], by_itself[k]) for k in in_search)


@pytest.mark.xdist_group("ray")
def test_a_trial_that_cannot_meet_its_target_fails_in_its_row(tmp_path, tiny_models):
    teacher, _ = tiny_models
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "nas.search", "--method", "kd", "--space", "tests/spaces/tiny_agd.yaml", "--teacher",
         str(teacher), "--budget", "1.9M", "--trials", "2", "--max-failures", "0", "--out", str(out),
         "--no-progress", *TINY_KD], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 2 and (table["status"] == "error").all()
    assert table["error"].str.startswith("kd: no uniformly scaled config of space 'tiny_agd' fits the target").all()
    assert "2 failed" in done.stdout
