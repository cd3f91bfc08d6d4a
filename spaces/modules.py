"""The one place where a plan becomes a module, with each block's cost written beside it.

Every block class has an ``add_cost`` static method that counts what its ``__init__`` builds, in
both MACs conventions (see ``Cost``); the property tests check the two against fvcore and
torchprofile. The layer classes come from a ``LayerKit`` so that the supernet builds the same
structure from elastic layers (``spaces.supernet``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spaces.plan import AgdLayerPlan, AnyPlan, InceptionBlockPlan, Plan, ResnetBlockPlan, UnetPlan


@dataclass
class Cost:
    """MACs of one image in both conventions, and parameters.

    ``torchprofile``: convs and transposed convs per output pixel, norms only when affine
    (one MAC per element). ``fvcore``: transposed convs per input pixel, instance norms 4
    (non-affine) or 5 (affine) per element, batch norms in eval 1 or 2 per element.
    """

    torchprofile: int = 0
    fvcore: int = 0
    params: int = 0

    def conv(self, cin: int, cout: int, k: int, h_out: int, w_out: int, *, groups: int = 1, bias: bool) -> None:
        macs = h_out * w_out * cout * (cin // groups) * k * k
        self.torchprofile += macs
        self.fvcore += macs
        self.params += cout * (cin // groups) * k * k + (cout if bias else 0)

    def conv_transpose(self, cin: int, cout: int, k: int, h_in: int, w_in: int, *, bias: bool) -> None:
        self.torchprofile += (2 * h_in) * (2 * w_in) * cout * cin * k * k
        self.fvcore += h_in * w_in * cin * cout * k * k
        self.params += cin * cout * k * k + (cout if bias else 0)

    def norm(self, kind: str, c: int, h: int, w: int) -> None:
        if kind == "none":
            return
        elements = c * h * w
        if kind == "instance":
            self.fvcore += 4 * elements
        else:
            self.torchprofile += elements
            self.fvcore += 2 * elements
            self.params += 2 * c


class ElementwiseInstanceNorm(nn.Module):
    """Non-affine instance norm that takes any number of channels (nn.InstanceNorm2d warns)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.instance_norm(x, eps=self.eps)


@dataclass(frozen=True)
class LayerKit:
    """The layer classes a generator is built from: plain torch layers, or elastic ones."""

    conv: type = nn.Conv2d
    conv_transpose: type = nn.ConvTranspose2d
    batch_norm: type = nn.BatchNorm2d
    instance_norm: type = nn.InstanceNorm2d

    def norm(self, kind: str, channels: int) -> nn.Module:
        if kind == "none":
            return nn.Identity()
        return self.instance_norm(channels) if kind == "instance" else self.batch_norm(channels)


PLAIN = LayerKit()


def uses_bias(norm: str) -> bool:
    # As pix2pix: a conv followed by batch norm needs no bias; with instance norm (or none) it keeps one.
    return norm != "batch"


class ResnetBlock(nn.Module):
    """x + norm(conv(relu(norm(conv(x))))), with separable convs in the ``mobile`` kind."""

    def __init__(self, plan: ResnetBlockPlan, norm: str, kit: LayerKit = PLAIN) -> None:
        super().__init__()
        c, h, bias = plan.channels, plan.hidden, uses_bias(norm)
        layers: list[nn.Module] = [nn.ReflectionPad2d(1)]
        layers += self._conv(c, h, norm, kit, bias, plan.kind)
        layers += [kit.norm(norm, h), nn.ReLU(True)]
        if plan.dropout > 0:
            layers.append(nn.Dropout(plan.dropout))
        layers.append(nn.ReflectionPad2d(1))
        layers += self._conv(h, c, norm, kit, bias, plan.kind)
        layers.append(kit.norm(norm, c))
        self.body = nn.Sequential(*layers)

    @staticmethod
    def _conv(cin: int, cout: int, norm: str, kit: LayerKit, bias: bool, kind: str) -> list[nn.Module]:
        if kind == "plain":
            return [kit.conv(cin, cout, 3, bias=bias)]
        # GAN Compression's separable conv: depthwise 3x3, norm, pointwise 1x1.
        return [nn.Sequential(kit.conv(cin, cin, 3, groups=cin, bias=bias), kit.norm(norm, cin),
                              kit.conv(cin, cout, 1, bias=bias))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)

    @staticmethod
    def add_cost(plan: ResnetBlockPlan, norm: str, cost: Cost, h: int, w: int) -> None:
        c, hidden, bias = plan.channels, plan.hidden, uses_bias(norm)
        for cin, cout in ((c, hidden), (hidden, c)):
            if plan.kind == "plain":
                cost.conv(cin, cout, 3, h, w, bias=bias)
            else:
                cost.conv(cin, cin, 3, h, w, groups=cin, bias=bias)
                cost.norm(norm, cin, h, w)
                cost.conv(cin, cout, 1, h, w, bias=bias)
            cost.norm(norm, cout, h, w)


def _res_branch(c: int, width: int, k: int, norm: str, kit: LayerKit) -> nn.Sequential:
    bias = uses_bias(norm)
    return nn.Sequential(nn.ReflectionPad2d(k // 2), kit.conv(c, width, k, bias=bias), kit.norm(norm, width),
                         nn.ReLU(True), nn.ReflectionPad2d(k // 2), kit.conv(width, c, k, bias=bias))


def _dw_branch(c: int, width: int, k: int, norm: str, kit: LayerKit) -> nn.Sequential:
    bias = uses_bias(norm)
    return nn.Sequential(kit.conv(c, width, 1, bias=bias), kit.norm(norm, width), nn.ReLU(True),
                         nn.ReflectionPad2d(k // 2), kit.conv(width, width, k, groups=width, bias=bias),
                         kit.norm(norm, width), nn.ReLU(True), kit.conv(width, c, 1, bias=bias))


class InceptionBlock(nn.Module):
    """x + norm(sum of branches); a block without branches is the identity."""

    def __init__(self, plan: InceptionBlockPlan, norm: str, kit: LayerKit = PLAIN) -> None:
        super().__init__()
        c = plan.channels
        self.res = nn.ModuleDict({f"k{k}": _res_branch(c, width, k, norm, kit) for k, width in plan.res})
        self.dw = nn.ModuleDict({f"k{k}": _dw_branch(c, width, k, norm, kit) for k, width in plan.dw})
        self.norm = kit.norm(norm, c) if plan.res or plan.dw else nn.Identity()

    def branches(self) -> list[nn.Module]:
        return list(self.res.values()) + list(self.dw.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = self.branches()
        if not branches:
            return x
        return x + self.norm(sum(branch(x) for branch in branches))

    @staticmethod
    def add_cost(plan: InceptionBlockPlan, norm: str, cost: Cost, h: int, w: int) -> None:
        c, bias = plan.channels, uses_bias(norm)
        for k, width in plan.res:
            cost.conv(c, width, k, h, w, bias=bias)
            cost.norm(norm, width, h, w)
            cost.conv(width, c, k, h, w, bias=bias)
        for k, width in plan.dw:
            cost.conv(c, width, 1, h, w, bias=bias)
            cost.norm(norm, width, h, w)
            cost.conv(width, width, k, h, w, groups=width, bias=bias)
            cost.norm(norm, width, h, w)
            cost.conv(width, c, 1, h, w, bias=bias)
        if plan.res or plan.dw:
            cost.norm(norm, c, h, w)


class ConvCell(nn.Sequential):
    """AGD ``conv``: 3x3 conv to a new width, norm, ReLU."""

    def __init__(self, cin: int, width: int, norm: str, kit: LayerKit = PLAIN) -> None:
        super().__init__(nn.ReflectionPad2d(1), kit.conv(cin, width, 3, bias=uses_bias(norm)),
                         kit.norm(norm, width), nn.ReLU(True))


class Residual(nn.Module):
    """x + body(x): AGD's ``res`` and ``sep`` cells are residual blocks of hidden width."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def agd_cell(op: str, cin: int, width: int, norm: str, kit: LayerKit = PLAIN) -> nn.Module:
    """The module of one AGD cell; ``res``/``sep`` reuse the resnet block's plain/mobile bodies."""
    if op == "skip":
        return nn.Identity()
    if op == "conv":
        return ConvCell(cin, width, norm, kit)
    kind = "plain" if op == "res" else "mobile"
    return Residual(ResnetBlock(ResnetBlockPlan(kind, cin, width), norm, kit).body)


def add_agd_cost(plan: AgdLayerPlan, norm: str, cost: Cost, h: int, w: int) -> None:
    if plan.op == "conv":
        cost.conv(plan.in_channels, plan.width, 3, h, w, bias=uses_bias(norm))
        cost.norm(norm, plan.width, h, w)
    elif plan.op in ("res", "sep"):
        kind = "plain" if plan.op == "res" else "mobile"
        ResnetBlock.add_cost(ResnetBlockPlan(kind, plan.in_channels, plan.width), norm, cost, h, w)


def build_block(plan: ResnetBlockPlan | InceptionBlockPlan | AgdLayerPlan, norm: str,
                kit: LayerKit = PLAIN) -> nn.Module:
    if isinstance(plan, ResnetBlockPlan):
        return ResnetBlock(plan, norm, kit)
    if isinstance(plan, InceptionBlockPlan):
        return InceptionBlock(plan, norm, kit)
    return agd_cell(plan.op, plan.in_channels, plan.width, norm, kit)


class Generator(nn.Module):
    """Stem (7x7), two stride-2 convs, a trunk of blocks, two transposed convs, 7x7 head.

    The layout of the pix2pix/CycleGAN ResnetGenerator, shared by every family; only the
    trunk differs. With ``global_residual`` the input is added to the head's output.
    """

    def __init__(self, plan: Plan, kit: LayerKit = PLAIN, trunk: list[nn.Module] | None = None) -> None:
        super().__init__()
        n, bias = plan.norm, uses_bias(plan.norm)
        self.global_residual = plan.global_residual
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), kit.conv(plan.in_channels, plan.stem, 7, bias=bias),
                                  kit.norm(n, plan.stem), nn.ReLU(True))
        self.down1 = nn.Sequential(kit.conv(plan.stem, plan.down1, 3, stride=2, padding=1, bias=bias),
                                   kit.norm(n, plan.down1), nn.ReLU(True))
        self.down2 = nn.Sequential(kit.conv(plan.down1, plan.trunk, 3, stride=2, padding=1, bias=bias),
                                   kit.norm(n, plan.trunk), nn.ReLU(True))
        blocks = trunk if trunk is not None else [build_block(b, n, kit) for b in plan.blocks]
        self.trunk = nn.Sequential(*blocks)
        self.up1 = nn.Sequential(
            kit.conv_transpose(plan.trunk_out, plan.up1, 3, stride=2, padding=1, output_padding=1, bias=bias),
            kit.norm(n, plan.up1), nn.ReLU(True))
        self.up2 = nn.Sequential(
            kit.conv_transpose(plan.up1, plan.up2, 3, stride=2, padding=1, output_padding=1, bias=bias),
            kit.norm(n, plan.up2), nn.ReLU(True))
        self.head = nn.Sequential(nn.ReflectionPad2d(3), kit.conv(plan.up2, plan.out_channels, 7, bias=True),
                                  nn.Identity() if plan.global_residual else nn.Tanh())
        if plan.global_residual:  # start as the identity on the input (e.g. bicubic upscaling), then refine it
            nn.init.zeros_(self.head[1].weight)
            nn.init.zeros_(self.head[1].bias)

    multiple = 4  # two stride-2 convs: input sides must be multiples of 4

    @property
    def in_channels(self) -> int:
        return self.stem[1].in_channels

    def taps(self) -> list[nn.Module]:
        """Where feature distillation reads this generator: the trunk blocks."""
        return list(self.trunk)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.down2(self.down1(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.up2(self.up1(self.trunk(self.features(x)))))
        return x + y if self.global_residual else y


class UnetGenerator(nn.Module):
    """pix2pix's UnetGenerator, unrolled: level i's 4x4 stride-2 conv (``down.i``) and transposed conv
    (``up.i``), the up conv reading the level's skip and the level below's output concatenated.

    As in pix2pix, the LeakyReLU that opens the next level's down path acts in place on the skip too,
    so the skip carries the activated features; the outermost and innermost levels have no down norm;
    the outermost up conv keeps its bias and ends in tanh (or, with ``global_residual``, starts at zero
    and adds the input). Its receptive field is the whole image: it runs whole, never tiled.
    """

    whole_image = True  # the tiler runs it on the whole (padded) image

    def __init__(self, plan: UnetPlan, kit: LayerKit = PLAIN) -> None:
        super().__init__()
        n, norm, bias = plan.levels, plan.norm, uses_bias(plan.norm)
        self.multiple = 2 ** n
        self.global_residual = plan.global_residual
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in range(n):
            cin = plan.in_channels if i == 0 else plan.down[i - 1]
            inner = 0 < i < n - 1
            self.down.append(nn.Sequential(kit.conv(cin, plan.down[i], 4, stride=2, padding=1, bias=bias),
                                           kit.norm(norm, plan.down[i]) if inner else nn.Identity()))
            up: list[nn.Module] = [nn.ReLU(), kit.conv_transpose(sum(plan.up_inputs(i)), plan.up[i], 4, stride=2,
                                                                  padding=1, bias=bias or i == 0)]
            if i > 0:
                up.append(kit.norm(norm, plan.up[i]))
            else:
                up.append(nn.Identity() if plan.global_residual else nn.Tanh())
            if plan.has_dropout(i):
                up.append(nn.Dropout(plan.dropout))
            self.up.append(nn.Sequential(*up))
        if plan.global_residual:  # start as the identity on the input, then refine it
            nn.init.zeros_(self.up[0][1].weight)
            nn.init.zeros_(self.up[0][1].bias)

    @property
    def in_channels(self) -> int:
        return self.down[0][0].in_channels

    def taps(self) -> list[nn.Module]:
        """Where feature distillation reads this generator: the down levels between the outermost and
        the innermost (their conv + norm outputs)."""
        return list(self.down)[1:-1] or list(self.down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, h = [], x
        for i, level in enumerate(self.down):
            h = level(h)
            if i < len(self.down) - 1:
                h = F.leaky_relu(h, 0.2, inplace=True)  # in place as pix2pix (and uncounted by torchprofile)
            skips.append(h)
        y = self.up[-1](skips[-1])
        for i in range(len(self.up) - 2, -1, -1):
            y = self.up[i](torch.cat([skips[i], y], 1))
        return x + y if self.global_residual else y

    @staticmethod
    def add_cost(plan: UnetPlan, cost: Cost, height: int, width: int) -> None:
        n, norm, bias = plan.levels, plan.norm, uses_bias(plan.norm)
        for i in range(n):
            cin = plan.in_channels if i == 0 else plan.down[i - 1]
            h, w = height >> (i + 1), width >> (i + 1)
            cost.conv(cin, plan.down[i], 4, h, w, bias=bias)
            if 0 < i < n - 1:
                cost.norm(norm, plan.down[i], h, w)
            cost.conv_transpose(sum(plan.up_inputs(i)), plan.up[i], 4, h, w, bias=bias or i == 0)
            if i > 0:
                cost.norm(norm, plan.up[i], 2 * h, 2 * w)


def build_generator(plan: AnyPlan) -> Generator | UnetGenerator:
    """A plain generator (standard torch layers only) for a resolved config."""
    if isinstance(plan, UnetPlan):
        return UnetGenerator(plan)
    return Generator(plan)


def plan_terms(plan: Plan, height: int, width: int) -> dict[str, Cost]:
    """Exact MACs (both conventions) and params of each part of ``build_generator(plan)`` on one HxW
    image: ``stem``, ``down1``, ``down2``, ``trunk.I`` per block, ``up1``, ``up2``, ``head``. Each part
    depends on at most two neighbouring widths (``spaces.relaxed`` relies on it)."""
    n, bias = plan.norm, uses_bias(plan.norm)
    h2, w2, h4, w4 = (height + 1) // 2, (width + 1) // 2, (height + 3) // 4, (width + 3) // 4
    terms = {name: Cost() for name in ("stem", "down1", "down2")}
    terms["stem"].conv(plan.in_channels, plan.stem, 7, height, width, bias=bias)
    terms["stem"].norm(n, plan.stem, height, width)
    terms["down1"].conv(plan.stem, plan.down1, 3, h2, w2, bias=bias)
    terms["down1"].norm(n, plan.down1, h2, w2)
    terms["down2"].conv(plan.down1, plan.trunk, 3, h4, w4, bias=bias)
    terms["down2"].norm(n, plan.trunk, h4, w4)
    for i, block in enumerate(plan.blocks):
        cost = terms[f"trunk.{i}"] = Cost()
        if isinstance(block, ResnetBlockPlan):
            ResnetBlock.add_cost(block, n, cost, h4, w4)
        elif isinstance(block, InceptionBlockPlan):
            InceptionBlock.add_cost(block, n, cost, h4, w4)
        else:
            add_agd_cost(block, n, cost, h4, w4)
    up1, up2, head = terms["up1"], terms["up2"], terms["head"] = Cost(), Cost(), Cost()
    up1.conv_transpose(plan.trunk_out, plan.up1, 3, h4, w4, bias=bias)
    up1.norm(n, plan.up1, 2 * h4, 2 * w4)
    up2.conv_transpose(plan.up1, plan.up2, 3, 2 * h4, 2 * w4, bias=bias)
    up2.norm(n, plan.up2, 4 * h4, 4 * w4)
    head.conv(plan.up2, plan.out_channels, 7, 4 * h4, 4 * w4, bias=True)
    return terms


def plan_cost(plan: AnyPlan, height: int, width: int) -> Cost:
    """Exact MACs (both conventions) and params of ``build_generator(plan)`` on one HxW image."""
    if isinstance(plan, UnetPlan):
        cost = Cost()
        UnetGenerator.add_cost(plan, cost, height, width)
        return cost
    total = Cost()
    for term in plan_terms(plan, height, width).values():
        total.torchprofile += term.torchprofile
        total.fvcore += term.fvcore
        total.params += term.params
    return total
