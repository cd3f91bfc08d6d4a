import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT

if "PYTEST_XDIST_WORKER" in __import__("os").environ:
    # Two workers on two cores: torch's own threads would only fight each other.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A tiny teacher and a tiny inception supernet trained for 3 steps on sr4x: (teacher, supernet) paths."""
    from nas import train

    root = tmp_path_factory.mktemp("tiny_models")
    common = ["--steps", "3", "--batch-size", "2", "--crop", "32", "--eval-every", "2", "--checkpoint-every", "2",
              "--no-progress", "--device", "cpu"]
    train.main(["teacher", "--space", str(ROOT / "tests/spaces/tiny_teacher.yaml"), "--out", str(root / "teacher"),
                *common])
    teacher = root / "teacher" / "checkpoint.pth"
    train.main(["supernet", "--space", str(ROOT / "tests/spaces/tiny_inception.yaml"), "--teacher", str(teacher),
                "--out", str(root / "supernet"), *common])
    return teacher, root / "supernet" / "checkpoint.pth"


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory):
    """A tiny inception network of its space's max config, trained for 3 steps: what prune prunes."""
    from nas import train

    out = tmp_path_factory.mktemp("source")
    train.main(["teacher", "--space", str(ROOT / "tests/spaces/tiny_inception.yaml"), "--config", "max",
                "--out", str(out), "--steps", "3", "--batch-size", "2", "--crop", "32", "--eval-every", "3", "--checkpoint-every", "3",
                "--no-progress", "--device", "cpu"])
    return out / "checkpoint.pth"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_models):
    """A finished search on the tiny models (6 random trials under 4M MACs, its best student fine-tuned 3 steps):
    (run folder, the finished process). Tests that change it work on a copy."""
    import os
    import subprocess

    teacher, supernet = tiny_models
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    done = subprocess.run([sys.executable, "-m", "nas.search", "--space", "tests/spaces/tiny_inception.yaml",
                           "--teacher", str(teacher), "--supernet", str(supernet), "--out", str(out), "--no-progress",
                           "--budget", "4M", "--trials", "6", "--sampler", "random", "--finetune-steps", "3"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-2000:]
    return out, done
