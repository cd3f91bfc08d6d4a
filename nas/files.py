"""Atomic file writes: a reader sees the old file or the new one, never half of one; and output paths
checked before any work starts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from spaces.errors import UserError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; outputs are shared like any file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, or None where it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write a set of files into; when the block ends it replaces
    ``out`` as a whole (a reader sees the old folder or the new one, never part of one), and when the
    block fails or is interrupted it is removed, leaving ``out`` as it was."""
    out = Path(out)
    if out.is_symlink():  # the files go where the link points; the link stays
        out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name[:64]}.", dir=out.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        try:
            os.replace(staging, out)  # also over an empty folder
        except OSError:  # a folder with files: set it aside, move the new one in, then drop the old one
            old = Path(tempfile.mkdtemp(prefix=f".{out.name[:64]}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _writable(folder: Path) -> str | None:
    """Why nothing can be created in the existing folder ``folder`` (None: it can)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=folder))
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_room(path: Path, flag: str, folder: Path) -> None:
    """``folder`` (where ``path`` goes) exists or can be made, and files can be written there."""
    ancestor = _existing_ancestor(folder)
    longest = os.pathconf(ancestor, "PC_NAME_MAX") if ancestor.is_dir() else 255
    too_long = next((part for part in path.parts if len(os.fsencode(part)) > longest), None)
    if too_long is not None:
        raise UserError(f"{flag}: the name {too_long[:24]}... is {len(os.fsencode(too_long))} bytes long, over the "
                        f"{longest} a file name may have here; choose a shorter name")
    if not ancestor.is_dir():
        raise UserError(f"{flag} {path}: {ancestor} is a file, so no folder can be made there; choose another place")
    reason = _writable(ancestor)
    if reason:
        raise UserError(f"{flag} {path}: nothing can be written in {ancestor} ({reason}); choose another place")


def check_output_folder(path: str | Path, flag: str) -> Path:
    """Before any work: ``flag``'s ``path`` is a folder, or can be made one, and files can be written there.
    Nothing is created."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise UserError(f"{flag} {path} is a symbolic link to {os.readlink(path)}, which does not exist; give a folder")
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; give a folder (it is created if missing)")
    _check_room(path, flag, path)
    return path


def check_output_file(path: str | Path, flag: str) -> Path:
    """Before any work: ``flag``'s ``path`` is a file that can be written (its folder made if missing)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    _check_room(path, flag, path.parent)
    return path
