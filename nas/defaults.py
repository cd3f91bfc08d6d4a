"""The embedded default: the shipped sr4x teacher and supernets (``weights/sr4x/manifest.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spaces.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT / "weights" / "sr4x"


def shipped_manifest(task: str) -> dict[str, Any] | None:
    """The manifest of the shipped weights for ``task``; None where there are none (tasks but sr4x)."""
    path = DEFAULT_WEIGHTS / "manifest.json"
    if task != "sr4x" or not path.is_file():
        return None
    return json.loads(path.read_text())


def default_teacher(task: str, teacher: str | None) -> str:
    """``teacher``, or the shipped sr4x teacher; checks that the file is there."""
    if not teacher:
        manifest = shipped_manifest(task)
        if manifest is None:
            raise UserError(f"--teacher is required for --task {task} (the shipped weights are for sr4x)")
        teacher = str(DEFAULT_WEIGHTS / manifest["teacher"]["file"])
    if not Path(teacher).is_file():
        raise UserError(f"--teacher {teacher} not found")
    return teacher
