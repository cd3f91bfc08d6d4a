"""Declarative search spaces of image-to-image generators, their supernets and exact MACs."""

from spaces.errors import SpaceError, UserError
from spaces.space import CONVENTIONS, Config, SearchSpace, builtin_spaces, load_space

__all__ = ["CONVENTIONS", "Config", "SearchSpace", "SpaceError", "UserError", "builtin_spaces", "load_space"]
