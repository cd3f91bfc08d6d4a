"""What every command-line entry point shares: one-line errors and exit code 2 for bad input."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from spaces.errors import UserError

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run ``main``; a UserError becomes one line on stderr and exit code 2, without a traceback."""
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def parse_resolution(text: str) -> tuple[int, int]:
    """``256`` or ``256x320`` -> (height, width)."""
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise UserError(f"resolution {text!r} is not a number; write 256 or 256x320") from None
    if len(parts) > 2 or h < 16 or w < 16 or h % 4 or w % 4:
        raise UserError(f"resolution {text!r} is not allowed; use multiples of 4, at least 16 (e.g. 256 or 256x320)")
    return h, w
