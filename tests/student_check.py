"""What the methods' tests share: a method loaded on sr4x with tiny settings, stepping a trial (with save
and restore), and the check of an exported student (``nas.apply`` runs it on a photo)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def applies_to_a_photo(model: Path, tmp_path: Path) -> tuple[int, int]:
    """Run ``nas.apply`` with ``model`` on a 24x24 photo; returns the output's size."""
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(photos / "a.png")
    done = subprocess.run([sys.executable, "-m", "nas.apply", "--model", str(model), "--input", str(photos),
                           "--output", str(tmp_path / "applied")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return Image.open(tmp_path / "applied" / "a.png").size


def run_trial(method, target, folder=None, until=None):
    """Step a trial (restored from ``folder`` when it holds one, saved there after every step) until it
    ends or passes step ``until``; returns the trial and its last outcome."""
    from nas.methods.base import Candidate, Failed

    trial = method.start({"target": target})
    if folder is not None and any(folder.iterdir()):
        trial.restore(folder)
    while True:
        out = trial.step()
        if folder is not None:
            trial.save(folder)
        if isinstance(out, (Candidate, Failed)) or (until is not None and trial.steps_done >= until):
            return trial, out


def tiny_method(name: str, teacher, space, budget: float, options: dict, command: str = "student"):
    """Method ``name`` on sr4x with ``options``, loaded (32x32 latency, one repeat)."""
    from nas.methods import get_method
    from nas.methods.base import SearchContext

    method_class = get_method(name, command)
    context = SearchContext(method=name, task="sr4x", teacher=str(teacher), space=str(space), budget=int(budget),
                            latency_resolution=32, latency_repeats=1, options=method_class.Options(**options))
    method = method_class(context)
    method.load()
    return method
