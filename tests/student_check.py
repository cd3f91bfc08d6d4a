"""What every method's end-to-end test checks of its exported student: ``nas.apply`` runs it on a photo."""

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
