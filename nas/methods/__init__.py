"""Search methods, one module each, behind the interface of ``nas.methods.base``.

To add a method: write ``nas/methods/NAME.py`` with a ``Method`` subclass (its ``Options``
dataclass gives its command-line flags), and add it to ``METHODS`` below.
"""

from __future__ import annotations

from nas.methods.agd import AgdMethod
from nas.methods.base import Candidate, Method, SearchContext, Trial
from nas.methods.dmask import DmaskMethod
from nas.methods.kd import KdMethod
from nas.methods.ofa import OfaMethod
from nas.methods.prune import PruneMethod
from spaces.errors import UserError

METHODS: dict[str, type[Method]] = {"ofa": OfaMethod, "kd": KdMethod, "prune": PruneMethod, "dmask": DmaskMethod,
                                    "agd": AgdMethod}


def list_methods(command: str = "search") -> list[str]:
    """The methods a command can run: "search" (nas.search) or "student" (nas.train student)."""
    return [name for name, method in METHODS.items() if command in method.commands]


def get_method(name: str, command: str = "search") -> type[Method]:
    available = ", ".join(list_methods(command))
    if name in METHODS and command in METHODS[name].commands:
        return METHODS[name]
    if name in METHODS:
        runs = " or ".join(f"`{'nas.search' if c == 'search' else 'nas.train ' + c}`" for c in METHODS[name].commands)
        raise UserError(f"--method {name} runs with {runs}, not here; available here: {available}")
    raise UserError(f"unknown --method {name!r}; available: {available}")


__all__ = ["METHODS", "Candidate", "Method", "SearchContext", "Trial", "get_method", "list_methods"]
