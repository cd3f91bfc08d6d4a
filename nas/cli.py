"""What every command-line entry point shares: one-line errors and exit code 2 for bad input."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable, NoReturn

from spaces.errors import UserError

EXIT_USAGE = 2
MAX_RESOLUTION = 8192  # as a space file's resolution


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
    except OSError as exc:  # what the system refused of a path given (a name too long, a permission, a full disk)
        if exc.filename is None:
            raise
        reason = exc.strerror or type(exc).__name__
        print(f"error: {exc.filename}: {reason}; check the path and the place it points to", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt as exc:  # Ctrl-C: what was written is whole; the command may say how to go on
        print(str(exc) or "interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def at_least(low: float, kind: type = int) -> Callable[[str], Any]:
    """An argparse ``type``: a finite ``kind`` (int or float) of at least ``low``; anything else is refused in
    one line naming the flag."""
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"{text} is not allowed: give a number of at least {low:g}")
        return value

    convert.__name__ = kind.__name__
    return convert


def parse_resolution(text: str) -> tuple[int, int]:
    """``256`` or ``256x320`` -> (height, width)."""
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise UserError(f"resolution {text!r} is not a number; write 256 or 256x320") from None
    if len(parts) > 2 or h < 16 or w < 16 or h % 4 or w % 4 or max(h, w) > MAX_RESOLUTION:
        raise UserError(f"resolution {text!r} is not allowed; use multiples of 4 from 16 to {MAX_RESOLUTION} "
                        "(e.g. 256 or 256x320)")
    return h, w


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, options: type, *, title: str | None = None) -> None:
    """One flag per field of the dataclass ``options`` (help from the field's metadata); the values are
    checked when the dataclass is built (``dataclass_from_args``), in the one place that knows them."""
    import dataclasses
    import typing

    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(options)
    for f in dataclasses.fields(options):
        kind = hints[f.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "")
        if base is bool:
            group.add_argument(_flag(f.name), action="store_true", default=None, help=help_text)
        else:
            group.add_argument(_flag(f.name), type=base, default=None,
                               help=f"{help_text} (default {default})" if default is not None else help_text)


def dataclass_from_args(options: type, args: argparse.Namespace, base: object | None = None) -> object:
    """The dataclass ``options`` from the flags given (others from ``base`` or the defaults)."""
    import dataclasses

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(options) if getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **given) if base is not None else options(**given)


def dataclass_from_stored(options: type, stored: dict, source: str) -> Any:
    """The dataclass ``options`` from values stored in a file (``source``): each checked against its field's
    type (an int where a float is asked is fine), keys it does not know dropped; one line for a wrong value."""
    import dataclasses
    import types
    import typing

    hints, given = typing.get_type_hints(options), {}
    for f in dataclasses.fields(options):
        if f.name not in stored:
            continue
        value, kind = stored[f.name], hints[f.name]
        allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union \
            else (kind,)
        if Any not in allowed:
            allowed = tuple(type(None) if a is None else a for a in allowed)
            ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
            if not ok and not (float in allowed and isinstance(value, int) and not isinstance(value, bool)):
                raise UserError(f"{source} is damaged: its option {f.name!r} is {value!r}, not "
                                f"{' or '.join(getattr(a, '__name__', str(a)) for a in allowed)}")
        given[f.name] = value
    try:
        return options(**given)
    except TypeError as exc:  # a required option missing
        raise UserError(f"{source} is damaged: {exc}") from None


def parse_budget(text: str | None) -> int:
    """``--budget`` (2.6G, 500M, 2.6e9) as MACs; a one-line error when missing or unreadable."""
    from evaluators.macs import parse_macs

    if not text:
        raise UserError("--budget is required (e.g. --budget 2.6G, 500M or 2.6e9)")
    try:
        return parse_macs(text)
    except ValueError as exc:
        raise UserError(f"--budget: {exc}") from None


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``), read before the full parse
    (the method decides which flags exist)."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
