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
