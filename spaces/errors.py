"""The one exception type for bad user input; CLIs turn it into one line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message says what was wrong, where, and what to do."""


class SpaceError(UserError):
    """A search-space file that does not validate."""

    def __init__(self, file: str, path: str, line: int | None, message: str) -> None:
        self.file, self.path, self.line, self.message = file, path, line, message
        where = f"{file}:{line}" if line is not None else file
        key = f"{path}: " if path else ""
        super().__init__(f"{where}: {key}{message}")

    def __reduce__(self):  # pickled with its fields (a Ray worker's error reaches the driver)
        return type(self), (self.file, self.path, self.line, self.message)
