"""A config resolved into channel counts: what both the module builder and the MACs formula read.

A ``Plan`` is the whole generator written down as numbers (the widths of every layer and the
blocks of the trunk). ``spaces.modules`` turns it into modules and counts its cost; nothing
else knows the structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from spaces.schema import SpaceSpec


@dataclass(frozen=True)
class ResnetBlockPlan:
    """A residual block of two 3x3 convs (plain) or two separable 3x3 convs (mobile)."""

    kind: str
    channels: int
    hidden: int
    dropout: float = 0.0


@dataclass(frozen=True)
class InceptionBlockPlan:
    """CAT's inception-residual block: parallel k x k and depthwise k x k branches, summed.

    ``res`` and ``dw`` list (kernel size, width) of the branches present (width > 0).
    """

    channels: int
    res: tuple[tuple[int, int], ...]
    dw: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class AgdLayerPlan:
    """One AutoGAN-Distiller cell: an operator at a width (``conv`` changes the trunk width)."""

    op: str
    in_channels: int
    width: int

    @property
    def out_channels(self) -> int:
        return self.width if self.op == "conv" else self.in_channels


BlockPlan = Union[ResnetBlockPlan, InceptionBlockPlan, AgdLayerPlan]


@dataclass(frozen=True)
class Plan:
    in_channels: int
    out_channels: int
    norm: str
    global_residual: bool
    stem: int
    down1: int
    trunk: int
    up1: int
    up2: int
    blocks: tuple[BlockPlan, ...]

    @property
    def trunk_out(self) -> int:
        """Width entering the first upsampling (agd ``conv`` cells may change it)."""
        width = self.trunk
        for block in self.blocks:
            if isinstance(block, AgdLayerPlan):
                width = block.out_channels
        return width


@dataclass(frozen=True)
class UnetPlan:
    """pix2pix's U-Net: ``down[i]`` channels out of level i's 4x4 stride-2 conv (outermost first),
    ``up[i]`` out of level i's transposed conv for the inner levels 1..n-1 (level 0's makes the image).
    Level i's up conv reads ``down[i]`` and ``up[i + 1]`` concatenated (the innermost: ``down[n - 1]``)."""

    in_channels: int
    out_channels: int
    norm: str
    global_residual: bool
    down: tuple[int, ...]
    up: tuple[int, ...]  # up[0] is out_channels
    dropout: float = 0.0

    @property
    def levels(self) -> int:
        return len(self.down)

    def up_inputs(self, level: int) -> tuple[int, ...]:
        """Widths of the parts concatenated into level ``level``'s up conv, in order."""
        if level == self.levels - 1:
            return (self.down[level],)
        return (self.down[level], self.up[level + 1])

    def has_dropout(self, level: int) -> bool:
        # As pix2pix: the levels between the ngf*8 one and the innermost (4 .. n-2) drop out.
        return self.dropout > 0 and 4 <= level <= self.levels - 2


AnyPlan = Union[Plan, UnetPlan]


def agd_token(op: str, width: int) -> str:
    return "skip" if op == "skip" else f"{op}{width}"


def parse_agd_token(token: str) -> tuple[str, int]:
    """``res32`` -> (``res``, 32); ``skip`` -> (``skip``, 0)."""
    if token == "skip":
        return "skip", 0
    op = token.rstrip("0123456789")
    return op, int(token[len(op):])


def resnet_group_sizes(blocks: int, groups: int) -> list[int]:
    """Blocks per group as GAN Compression splits them: n//g each, the remainder to the last."""
    size = blocks // groups
    return [size] * (groups - 1) + [blocks - size * (groups - 1)]


def make_plan(spec: SpaceSpec, config: dict[str, int | str]) -> AnyPlan:
    """Resolve a validated config of ``spec`` into channel counts."""
    if spec.family == "unet":
        down = tuple(int(config[f"down{i}"]) * site.scale for i, site in enumerate(spec.down))
        up = (spec.out_channels,) + tuple(int(config[f"up{i + 1}"]) * site.scale for i, site in enumerate(spec.up))
        return UnetPlan(spec.in_channels, spec.out_channels, spec.norm, spec.global_residual, down, up, spec.dropout)
    w = {site: int(config[site]) * spec.widths[site].scale for site in ("stem", "down1", "trunk", "up1", "up2")}
    trunk = w["trunk"]
    blocks: list[BlockPlan] = []
    if spec.family == "resnet":
        for g, (site, count) in enumerate(zip(spec.groups, resnet_group_sizes(spec.blocks, len(spec.groups)))):
            hidden = int(config[f"group{g + 1}"]) * site.scale
            blocks += [ResnetBlockPlan(spec.block, trunk, hidden, spec.dropout)] * count
    elif spec.family == "inception":
        for b in range(spec.blocks):
            res = tuple((k, int(config[f"b{b}.res{k}"])) for k in spec.kernel_sizes)
            dw = tuple((k, int(config[f"b{b}.dw{k}"])) for k in spec.kernel_sizes)
            blocks.append(InceptionBlockPlan(trunk, tuple(x for x in res if x[1]), tuple(x for x in dw if x[1])))
    else:
        width = trunk
        for i in range(spec.layers):
            op, hidden = parse_agd_token(str(config[f"layer{i}"]))
            layer = AgdLayerPlan(op, width, hidden)
            blocks.append(layer)
            width = layer.out_channels
    return Plan(spec.in_channels, spec.out_channels, spec.norm, spec.global_residual,
                w["stem"], w["down1"], trunk, w["up1"], w["up2"], tuple(blocks))
