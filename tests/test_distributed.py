"""Data-parallel training on Ray Train (2 CPU workers, gloo) computes what one process computes."""

import os
import random
import subprocess
import sys

import pytest
import torch

from nas import train
from nas.checkpoint import load_generator, load_supernet, read_training_record
from nas.data import load_task
from nas.methods.ofa import sandwich_config
from spaces import UserError, load_space

pytestmark = pytest.mark.xdist_group("ray")  # one Ray instance at a time on two cores

COMMON = ["--batch-size", "4", "--crop", "32", "--eval-every", "100", "--no-progress", "--device", "cpu",
          "--lr", "1e-3"]
# Outputs of a 2-worker run against a one-process run of the same steps: gradients averaged over two
# half batches equal the full batch's up to float rounding. Compared on outputs, not weights: a conv
# bias before instance norm has a gradient of zero up to rounding noise, which Adam scales up to
# steps of size lr, so such biases drift apart (by 3e-3 after 4 steps here) without changing the output.
TOLERANCE = 1e-4


def run_cli(args, env=None, timeout=600):
    cmd = [sys.executable, "-m", "nas.train", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def largest_difference(a, b):
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def output_difference(first, second, configs=None):
    """Largest difference of two generators' (or supernets', for each of ``configs``) outputs on fixed images."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    differences = []
    for config in configs or [None]:
        if config is not None:
            first.set_active(config)
            second.set_active(config)
        with torch.no_grad():
            differences.append(float((first(x) - second(x)).abs().max()))
    return max(differences)


def test_ranks_train_on_disjoint_slices_of_the_one_global_batch(root):
    from nas.teacher import TeacherObjective
    from nas.training import TrainSettings, Training

    space = load_space(str(root / "tests/spaces/tiny_teacher.yaml"))
    task = load_task("sr4x")
    settings = TrainSettings(steps=4, batch_size=4, crop=32)
    objective = TeacherObjective(space, space.max_config(), task, settings, torch.device("cpu"), space_arg="t",
                                 task_spec="sr4x")
    training = Training(objective, task, settings, torch.device("cpu"), task_spec="sr4x")
    whole, _ = training.batch(1)
    training.shard = (0, 2)
    first, _ = training.batch(1)
    training.shard = (1, 2)
    second, _ = training.batch(1)
    assert first.shape[0] == second.shape[0] == 2 and not torch.equal(first, second)
    assert torch.equal(torch.cat([first, second]), whole)


def test_every_rank_draws_the_same_subnet_whatever_its_own_random_state(root):
    space = load_space(str(root / "tests/spaces/tiny_inception.yaml"))
    drawn = [sandwich_config(space, 0, step) for step in range(8)]
    random.seed(123)
    torch.manual_seed(456)  # another rank's generators are elsewhere: the draw must not depend on them
    assert [sandwich_config(space, 0, step) for step in range(8)] == drawn


def test_a_batch_the_workers_cannot_share_equally_is_refused(tmp_path, root):
    with pytest.raises(UserError, match=r"--batch-size 5 is not divisible by --workers 2"):
        train.main(["teacher", "--space", str(root / "tests/spaces/tiny_teacher.yaml"), "--out", str(tmp_path / "t"),
                    "--steps", "2", "--workers", "2", *COMMON[:1], "5", *COMMON[2:]])


def test_two_workers_survive_a_killed_worker_and_match_one_worker(tmp_path, root):
    space = str(root / "tests/spaces/tiny_teacher.yaml")
    args = ["teacher", "--space", space, "--steps", "4", "--checkpoint-every", "2", *COMMON]
    train.main([*args, "--out", str(tmp_path / "one")])
    marker = tmp_path / "killed"
    run_cli([*args, "--out", str(tmp_path / "two"), "--workers", "2"],
            env={"NAS_TEST_KILL_WORKER": f"1:2:{marker}"})
    assert marker.exists()  # rank 1 died after step 2; the group restarted from the step-2 checkpoint
    one, two = (read_training_record(tmp_path / run / "checkpoint.pth") for run in ("one", "two"))
    assert two["step"] == 4 and two["args"]["workers"] == 2
    first, second = (load_generator(tmp_path / run / "checkpoint.pth").module for run in ("one", "two"))
    assert output_difference(first, second) < TOLERANCE
    start = load_space(space).build(load_space(space).max_config())  # the outputs did change in 4 steps
    assert output_difference(first, start.eval()) > 100 * TOLERANCE
    assert two["metrics"]["val_psnr"] == pytest.approx(one["metrics"]["val_psnr"], abs=1e-3)


def test_a_supernet_trained_on_two_workers_resumes_on_one(tmp_path, root, tiny_models):
    teacher, _ = tiny_models
    args = ["supernet", "--space", str(root / "tests/spaces/tiny_inception.yaml"), "--teacher", str(teacher),
            "--steps", "4", "--checkpoint-every", "2", *COMMON]
    train.main([*args, "--out", str(tmp_path / "one")])
    run_cli([*args, "--out", str(tmp_path / "two"), "--workers", "2", "--stop-at", "2"])
    stopped = read_training_record(tmp_path / "two" / "checkpoint.pth")
    assert stopped["step"] == 2 and stopped["optimizers"]["generator"]["state"]
    train.main([*args, "--out", str(tmp_path / "two"), "--resume"])  # one worker, no Ray
    one, resumed = (read_training_record(tmp_path / run / "checkpoint.pth") for run in ("one", "two"))
    assert resumed["step"] == 4 and resumed["args"]["workers"] == 1
    first, second = (load_supernet(tmp_path / run / "checkpoint.pth")[0] for run in ("one", "two"))
    space = first.space
    assert output_difference(first, second, [space.max_config(), space.min_config()]) < TOLERANCE
    assert largest_difference(one["mappers"], resumed["mappers"]) < TOLERANCE
    for name in ("val_max", "val_min"):
        assert resumed["metrics"][name]["psnr"] == pytest.approx(one["metrics"][name]["psnr"], abs=1e-3)


@pytest.mark.slow  # about 110 s: the default suite keeps the teacher and supernet loops' (about 3 min)
def test_a_student_resumed_on_two_workers_survives_a_killed_worker_and_matches_one_process(
        tmp_path, root, tiny_models, tiny_source):
    """prune (CAT's kernel alignment, a loss of the whole batch): one process to step 2, then two workers
    with --resume, rank 1 killed after step 4; the student equals a one-process run's."""
    import json

    teacher, _ = tiny_models
    args = ["student", "--method", "prune", "--source", str(tiny_source), "--teacher", str(teacher), "--budget", "4M",
            "--steps", "6", "--checkpoint-every", "2", "--batch-size", "4", "--crop", "32", "--no-progress",
            "--device", "cpu"]
    train.main([*args, "--out", str(tmp_path / "one")])
    train.main([*args, "--out", str(tmp_path / "two"), "--stop-at", "2"])
    marker = tmp_path / "killed"
    run_cli([*args, "--out", str(tmp_path / "two"), "--resume", "--workers", "2"],
            env={"NAS_TEST_KILL_WORKER": f"1:4:{marker}"})
    assert marker.exists()  # rank 1 died after step 4; the group restarted from the step-4 checkpoint
    one, two = (json.loads((tmp_path / run / "candidate.json").read_text()) for run in ("one", "two"))
    assert two["architecture"] == one["architecture"] and two["extra_steps"] == 6
    assert two["psnr"] == pytest.approx(one["psnr"], abs=1e-3)  # judged once, by rank 0
    first, second = (load_generator(tmp_path / run / "student" / "model.pth").module.eval() for run in ("one", "two"))
    assert output_difference(first, second) < TOLERANCE
    trained = read_training_record(tmp_path / "two" / "trial" / "checkpoint.pth", kind="student")
    assert trained["step"] == 6
