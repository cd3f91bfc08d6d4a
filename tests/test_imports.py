"""A training method's trial runs where Ray, Optuna, fvcore, torchprofile and plotly are not installed."""

import subprocess
import sys

BLOCKED = ("ray", "optuna", "fvcore", "torchprofile", "plotly")

# Run nas.train student with those packages made unimportable (as if they were not installed).
BLOCK = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
sys.meta_path.insert(0, Block())
sys.argv = ["nas.train", *sys.argv[1:]]
from nas import train
from nas.cli import run
run(train.main)
"""


def test_a_kd_trial_runs_without_the_search_stack(tmp_path, tiny_models):
    teacher, _ = tiny_models
    done = subprocess.run(
        [sys.executable, "-c", BLOCK, "student", "--method", "kd", "--space", "tests/spaces/tiny_resnet.yaml",
         "--teacher", str(teacher), "--budget", "3M", "--out", str(tmp_path / "kd"), "--steps", "2",
         "--checkpoint-every", "2", "--batch-size", "2", "--crop", "32", "--no-progress", "--device", "cpu"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "kd" / "student" / "model.pth").is_file() and "exported to" in done.stdout
    probe = subprocess.run([sys.executable, "-c", BLOCK.replace("from nas import train", "import ray"), "x"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr  # the block works
