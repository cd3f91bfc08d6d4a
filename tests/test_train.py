"""Teacher and supernet training: tiny real runs, exact resume, pseudo pairs, inherited weights."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from nas import train
from nas.discriminator import discriminator_from
from nas.checkpoint import load_generator, load_supernet, safe_load
from nas.methods.ofa import parse_sandwich, sandwich_config
from spaces import UserError, load_space

SPACES = "tests/spaces"
TINY = ["--batch-size", "2", "--crop", "32", "--eval-every", "2", "--checkpoint-every", "2", "--no-progress",
        "--device", "cpu"]


def run_teacher(out, steps, *extra):
    return train.main(["teacher", "--space", f"{SPACES}/tiny_teacher.yaml", "--out", str(out), "--steps", str(steps),
                       *TINY, *extra])


def run_supernet(out, teacher, steps, *extra, space="tiny_resnet"):
    return train.main(["supernet", "--space", f"{SPACES}/{space}.yaml", "--teacher", str(teacher), "--out", str(out),
                       "--steps", str(steps), *TINY, *extra])


def state_of(path, key):
    return safe_load(path)[key]


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    run_teacher(out, 4, "--gan-weight", "0.1", "--ndf", "8")
    return out / "checkpoint.pth"


def test_teacher_training_writes_a_usable_teacher(teacher):
    record = safe_load(teacher)
    assert record["step"] == 4 and record["metrics"]["val_psnr"] > 10 and record["discriminator"] is not None
    loaded = load_generator(teacher)  # a training checkpoint works wherever a teacher does
    assert loaded.meta["task"] == "sr4x" and loaded.space.encode(loaded.config) == "8_8_4_4_4_4_8_8"


def test_teacher_resume_is_exact(tmp_path, teacher):
    run_teacher(tmp_path / "b", 4, "--gan-weight", "0.1", "--ndf", "8", "--stop-at", "2")
    assert safe_load(tmp_path / "b" / "checkpoint.pth")["step"] == 2
    run_teacher(tmp_path / "b", 4, "--gan-weight", "0.1", "--ndf", "8", "--resume")
    a, b = safe_load(teacher), safe_load(tmp_path / "b" / "checkpoint.pth")
    assert b["step"] == 4
    assert_same_state(a["generator"]["state_dict"], b["generator"]["state_dict"])
    assert_same_state(a["discriminator"], b["discriminator"])
    assert a["optimizers"]["generator"]["state"][0]["step"] == b["optimizers"]["generator"]["state"][0]["step"]


def test_out_with_a_checkpoint_needs_resume(tmp_path, teacher):
    out = teacher.parent
    with pytest.raises(UserError, match="exists; pass --resume"):
        run_teacher(out, 4)
    with pytest.raises(UserError, match="--resume: no checkpoint"):
        run_teacher(tmp_path / "empty", 4, "--resume")
    with pytest.raises(UserError, match="trained with --seed 0, not 5"):
        run_teacher(out, 6, "--resume", "--seed", "5", "--gan-weight", "0.1", "--ndf", "8")


@pytest.mark.parametrize("space", ["tiny_resnet", "tiny_inception", "tiny_agd"])
def test_supernet_training_resume_and_inherited_subnets(tmp_path, teacher, space):
    run_supernet(tmp_path / "a", teacher, 4, space=space)
    run_supernet(tmp_path / "b", teacher, 4, "--stop-at", "3", space=space)
    run_supernet(tmp_path / "b", teacher, 4, "--resume", space=space)
    a, b = tmp_path / "a" / "checkpoint.pth", tmp_path / "b" / "checkpoint.pth"
    assert_same_state(state_of(a, "supernet"), state_of(b, "supernet"))
    assert_same_state(state_of(a, "mappers"), state_of(b, "mappers"))
    supernet, record = load_supernet(a)
    assert set(record["metrics"]) >= {"val_max", "val_min"} and record["metrics"]["val_max"]["psnr"] > 10
    config = supernet.space.sample(__import__("random").Random(0))
    supernet.set_active(config)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert (supernet(x) - supernet.extract(config)(x)).abs().max() < 1e-5


def test_sandwich_rule_visits_largest_and_smallest():
    space = load_space(f"{SPACES}/tiny_resnet.yaml")
    configs = [space.encode(sandwich_config(space, 0, step)) for step in range(8)]
    assert configs[0] == configs[4] == space.encode(space.max_config())
    assert configs[1] == configs[5] == space.encode(space.min_config())
    # another cycle: no largest subnet, and only random ones after the smallest
    schedule = parse_sandwich("min,random,random")
    configs = [space.encode(sandwich_config(space, 0, step, schedule)) for step in range(6)]
    assert configs[0] == configs[3] == space.encode(space.min_config()) and space.encode(space.max_config()) not in configs
    with pytest.raises(UserError, match="'biggest' is not a phase"):
        parse_sandwich("max,biggest")


def test_supernet_on_unpaired_data_distils_teacher_outputs(tmp_path, teacher):
    rng = np.random.default_rng(0)
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    run_supernet(tmp_path / "out", teacher, 2, "--task", str(data))
    metrics = state_of(tmp_path / "out" / "checkpoint.pth", "metrics")
    assert metrics["val_max"]["psnr"] is None and metrics["val_max"]["fidelity_psnr"] > 10
    with pytest.raises(UserError, match="has no targets"):
        run_teacher(tmp_path / "t", 2, "--task", str(data))


def test_supernet_discriminator_starts_from_the_teachers(tmp_path, teacher):
    disc = discriminator_from(str(teacher), 3, ndf=32)  # the teacher was trained with ndf 8: its width wins
    assert_same_state(disc.state_dict(), safe_load(teacher)["discriminator"])


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
