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
