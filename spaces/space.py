"""SearchSpace: the ordered choices of a space file, and what can be said of a config without a module."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Union

from torch import nn

from spaces.errors import UserError
from spaces.modules import Cost, build_generator, plan_cost
from spaces.plan import AnyPlan, agd_token, make_plan
from spaces.schema import SpaceSpec, load_space_file, parse_space

Choice = Union[int, str]
Config = dict[str, Choice]
CONVENTIONS = ("torchprofile", "fvcore")
BUILTIN_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Site:
    """One searchable decision: a name and its ordered choices."""

    name: str
    choices: tuple[Choice, ...]


def _sites(spec: SpaceSpec) -> list[Site]:
    def width(name: str) -> Site:
        return Site(name, spec.widths[name].choices)

    if spec.family == "unet":  # in the order data flows: down the levels, then back up
        return ([Site(f"down{i}", site.choices) for i, site in enumerate(spec.down)]
                + [Site(f"up{i + 1}", site.choices) for i, site in reversed(list(enumerate(spec.up)))])
    middle: list[Site] = []
    if spec.family == "resnet":
        middle = [Site(f"group{g + 1}", site.choices) for g, site in enumerate(spec.groups)]
    elif spec.family == "inception":
        for b in range(spec.blocks):
            middle += [Site(f"b{b}.{kind}{k}", spec.branch_widths) for kind in ("res", "dw") for k in spec.kernel_sizes]
    else:
        largest = max(spec.widths["trunk"].choices) * spec.widths["trunk"].scale
        hidden = [max(1, int(round(r * largest))) for r in spec.width_ratios]
        tokens = tuple(agd_token(op, h) for op in spec.operators if op != "skip" for h in hidden)
        tokens += ("skip",) if "skip" in spec.operators else ()
        middle = [Site(f"layer{i}", tokens) for i in range(spec.layers)]
    return [width("stem"), width("down1"), width("trunk"), *middle, width("up1"), width("up2")]


class SearchSpace:
    """Ordered choices of a generator family, and the MACs/params of any config, analytically.

    Configs are dicts from site name to choice; their compact string form joins the choices
    with ``_`` in site order (for the resnet family that is GAN Compression's config string).
    """

    def __init__(self, spec: SpaceSpec) -> None:
        self.spec = spec
        self.sites = _sites(spec)

    @classmethod
    def from_text(cls, text: str, *, source: str, name: str) -> SearchSpace:
        """A space from a space file's text (as checkpoints embed it); ``source`` names it in errors."""
        return cls(parse_space(text, file=source, name=name))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def spec_text(self) -> str:
        """The YAML text of the space file."""
        return self.spec.text

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def resolution(self) -> int:
        return self.spec.resolution

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, family={self.family!r}, sites={len(self.sites)}, size={self.size:.3g})"

    @property
    def size(self) -> int:
        """Number of distinct configs."""
        return math.prod(len(site.choices) for site in self.sites)

    def sample(self, rng: random.Random) -> Config:
        return {site.name: rng.choice(site.choices) for site in self.sites}

    @cached_property
    def _extremes(self) -> tuple[Config, Config]:
        # Coordinate-wise: widths are monotone in MACs, but agd cells are not ordered by name,
        # so pick each site's most (least) expensive choice with the others at the extreme.
        def extreme(pick: type[max] | type[min]) -> Config:
            config = {site.name: pick(site.choices, key=self._order_key) for site in self.sites}
            for site in self.sites:
                config[site.name] = pick(site.choices, key=lambda c: self.cost({**config, site.name: c}).torchprofile)
            return config
        return extreme(max), extreme(min)

    @staticmethod
    def _order_key(choice: Choice) -> tuple[int, int]:
        if isinstance(choice, int):
            return (0, choice)
        return (0, int(choice.lstrip("abcdefghijklmnopqrstuvwxyz") or 0))

    def max_config(self) -> Config:
        return dict(self._extremes[0])

    def min_config(self) -> Config:
        return dict(self._extremes[1])

    def encode(self, config: Config) -> str:
        config = self.validate(config)
        return "_".join(str(config[site.name]) for site in self.sites)

    def decode(self, text: str) -> Config:
        """Parse a config string (or ``max`` / ``min``); raises UserError saying what is wrong."""
        text = text.strip()
        if text in ("max", "min"):
            return self.max_config() if text == "max" else self.min_config()
        tokens = text.split("_")
        if len(tokens) != len(self.sites):
            raise UserError(f"config {text!r} has {len(tokens)} values but space '{self.name}' has "
                            f"{len(self.sites)} sites ({', '.join(s.name for s in self.sites[:6])}"
                            f"{', ...' if len(self.sites) > 6 else ''}); give one value per site joined by '_'")
        config: Config = {}
        for site, token in zip(self.sites, tokens):
            value: Choice = int(token) if token.isdigit() else token
            if value not in site.choices:
                raise UserError(f"config {text!r}: {token!r} is not a choice of site '{site.name}' in space "
                                f"'{self.name}'; allowed: {', '.join(map(str, site.choices))}")
            config[site.name] = value
        return config

    def validate(self, config: Config) -> Config:
        """Return ``config`` in site order; raises UserError for a missing, unknown or invalid site."""
        unknown = set(config) - {site.name for site in self.sites}
        if unknown:
            raise UserError(f"unknown site(s) {', '.join(sorted(unknown))} for space '{self.name}'")
        out: Config = {}
        for site in self.sites:
            if site.name not in config:
                raise UserError(f"config for space '{self.name}' misses site '{site.name}'")
            if config[site.name] not in site.choices:
                raise UserError(f"{config[site.name]!r} is not a choice of site '{site.name}' in space "
                                f"'{self.name}'; allowed: {', '.join(map(str, site.choices))}")
            out[site.name] = config[site.name]
        return out

    @property
    def multiple(self) -> int:
        """What the sides of an input must be multiples of (2 ** num_downs for a U-Net, else 4)."""
        return self.spec.multiple

    def plan(self, config: Config) -> AnyPlan:
        return make_plan(self.spec, self.validate(config))

    def cost(self, config: Config, resolution: int | tuple[int, int] | None = None) -> Cost:
        """MACs in both conventions and params of a config, without building a module."""
        h, w = _hw(resolution or self.resolution, self.multiple)
        return plan_cost(self.plan(config), h, w)

    def macs(self, config: Config, *, convention: str = "torchprofile",
             resolution: int | tuple[int, int] | None = None) -> int:
        if convention not in CONVENTIONS:
            raise UserError(f"unknown MACs convention {convention!r}; allowed: {', '.join(CONVENTIONS)}")
        return getattr(self.cost(config, resolution), convention)

    def params(self, config: Config) -> int:
        return self.cost(config).params

    def build(self, config: Config) -> nn.Module:
        """A plain generator for ``config`` (fresh weights)."""
        return build_generator(self.plan(config))


def _hw(resolution: int | tuple[int, int], multiple: int = 4) -> tuple[int, int]:
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    least = max(16, multiple)
    if h < least or w < least or h % multiple or w % multiple:
        raise UserError(f"resolution {h}x{w} is not allowed; use multiples of {multiple}, at least {least}")
    return h, w


def builtin_spaces() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A built-in space by name (``resnet``, ``inception``, ``agd``, ``unet``) or a space YAML file by path."""
    text = str(name_or_path)
    if text in builtin_spaces():
        return SearchSpace(load_space_file(BUILTIN_DIR / f"{text}.yaml"))
    if not text.endswith((".yaml", ".yml")) and not Path(text).exists():
        raise UserError(f"unknown space {text!r}; give one of {', '.join(builtin_spaces())} or the path of a "
                        "space YAML file")
    return SearchSpace(load_space_file(text))
