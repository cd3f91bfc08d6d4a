"""Once-for-all supernet: one set of weights that serves every config of a space.

Widths are elastic by first-k channel slicing (as in GAN Compression); each agd cell holds
every operator and runs the active one. ``extract`` copies the active slices into a plain
generator built by ``spaces.modules``, the same builder a fresh student comes from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from spaces.modules import (
    ElementwiseInstanceNorm,
    Generator,
    InceptionBlock,
    LayerKit,
    ResnetBlock,
    UnetGenerator,
    agd_cell,
    build_generator,
)
from spaces.plan import AgdLayerPlan, AnyPlan, InceptionBlockPlan, ResnetBlockPlan, UnetPlan, make_plan, parse_agd_token
from spaces.space import Config, SearchSpace


class ElasticConv2d(nn.Conv2d):
    """A conv whose input width follows the input and whose output width is ``active_out``."""

    active_out: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        if self.groups == 1:
            cout = self.active_out or self.out_channels
            weight, groups = self.weight[:cout, :cin], 1
        else:  # depthwise: one filter per input channel
            cout, weight, groups = cin, self.weight[:cin], cin
        bias = self.bias[:cout] if self.bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class ElasticConvTranspose2d(nn.ConvTranspose2d):
    """Output width ``active_out``; the input is the first channels, or, where it is a concatenation
    (a U-Net's skip and the level below), ``in_parts``: (offset, count) of each part in the widest input."""

    active_out: int | None = None
    in_parts: tuple[tuple[int, int], ...] | None = None

    def input_index(self) -> torch.Tensor | None:
        if self.in_parts is None:
            return None
        return torch.cat([torch.arange(start, start + count) for start, count in self.in_parts])

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        cout = self.active_out or self.out_channels
        index = self.input_index()
        weight = self.weight[: x.shape[1], :cout] if index is None else self.weight[index.to(x.device), :cout]
        bias = self.bias[:cout] if self.bias is not None else None
        return F.conv_transpose2d(x, weight, bias, self.stride, self.padding, self.output_padding, 1, self.dilation)


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the first C channels; running statistics of the slice are updated in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        momentum = self.momentum or 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(
            x,
            self.running_mean[:c] if self.running_mean is not None else None,
            self.running_var[:c] if self.running_var is not None else None,
            self.weight[:c] if self.weight is not None else None,
            self.bias[:c] if self.bias is not None else None,
            use_batch_stats, momentum, self.eps,
        )


ELASTIC = LayerKit(conv=ElasticConv2d, conv_transpose=ElasticConvTranspose2d,
                   batch_norm=ElasticBatchNorm2d, instance_norm=ElementwiseInstanceNorm)


class ElasticInceptionBlock(InceptionBlock):
    """Runs only the branches of the active config (``active`` holds keys like ``res.k3``)."""

    active: set[str] | None = None

    def branches(self) -> list[nn.Module]:
        named = [(f"res.{k}", m) for k, m in self.res.items()] + [(f"dw.{k}", m) for k, m in self.dw.items()]
        return [m for key, m in named if self.active is None or key in self.active]


class MixedCell(nn.Module):
    """An agd cell holding every operator; ``active`` names the one that runs."""

    def __init__(self, ops: dict[str, nn.Module]) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(ops)
        self.active = next(iter(ops))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops[self.active](x)


def recalibrate_batch_norm(module: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Re-estimate every batch norm's running statistics of ``module`` on ``batches`` (as once-for-all
    does for a subnet): reset, then a cumulative average over the batches, the rest of the module in
    eval mode (dropout off), so the result depends on the batches alone."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training, momenta = module.training, [norm.momentum for norm in norms]
    module.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: every batch counts the same
        norm.train()
    with torch.no_grad():
        for batch in batches:
            module(batch)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    module.train(was_training)


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def widest_plan(space: SearchSpace) -> AnyPlan:
    """The plan whose every width is the largest choice (agd cells are replaced by MixedCells)."""
    config: Config = {}
    for site in space.sites:
        ints = [c for c in site.choices if isinstance(c, int)]
        config[site.name] = max(ints) if ints else max(site.choices, key=lambda t: parse_agd_token(str(t))[1])
    return make_plan(space.spec, config)


class Supernet(nn.Module):
    """Shared weights of every config of ``space``; ``set_active`` picks the config that runs."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        plan = widest_plan(space)
        self.widest = plan
        self.active_config: Config = {}
        if isinstance(plan, UnetPlan):
            self.net: nn.Module = UnetGenerator(plan, ELASTIC)
            self.set_active(space.max_config())
            return
        trunk: list[nn.Module] = []
        for block in plan.blocks:
            if isinstance(block, ResnetBlockPlan):
                trunk.append(ResnetBlock(block, plan.norm, ELASTIC))
            elif isinstance(block, InceptionBlockPlan):
                trunk.append(ElasticInceptionBlock(block, plan.norm, ELASTIC))
            else:
                width = max(parse_agd_token(str(t))[1] for t in space.sites[3].choices)
                trunk.append(MixedCell({op: agd_cell(op, plan.trunk, width, plan.norm, ELASTIC)
                                        for op in space.spec.operators}))
        if space.family == "agd":
            plan = replace(plan, blocks=tuple(AgdLayerPlan("skip", plan.trunk, 0) for _ in trunk))
        self.net = Generator(plan, ELASTIC, trunk)
        self.set_active(space.max_config())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _cells(self) -> dict[str, MixedCell]:
        return {name: m for name, m in self.net.named_modules() if isinstance(m, MixedCell)}

    def _supernet_name(self, plain_name: str, ops: dict[str, str]) -> str:
        """Name in ``self.net`` of a plain generator's module or tensor (agd cells add ``ops.<op>``)."""
        for path, op in ops.items():
            if plain_name == path or plain_name.startswith(path + "."):
                return f"{path}.ops.{op}{plain_name[len(path):]}"
        return plain_name

    def _in_parts(self, config: Config) -> dict[str, tuple[tuple[int, int], ...]]:
        """The concatenated inputs of a U-Net's up convs: (offset in the widest input, active count) per part."""
        if not isinstance(self.widest, UnetPlan):
            return {}
        plan, widest = self.space.plan(config), self.widest
        parts = {}
        for level in range(plan.levels - 1):
            offsets = (0, widest.up_inputs(level)[0])
            parts[f"up.{level}.1"] = tuple(zip(offsets, plan.up_inputs(level)))
        return parts

    def _active_ops(self, config: Config) -> dict[str, str]:
        return {path: parse_agd_token(str(config[f"layer{int(path.split('.')[1])}"]))[0]
                for path in self._cells()}

    def set_active(self, config: Config) -> None:
        """Make ``config`` the subnet that ``forward`` runs."""
        config = self.space.validate(config)
        ops = self._active_ops(config)
        for path, cell in self._cells().items():
            cell.active = ops[path]
        with torch.device("meta"):
            plain = build_generator(self.space.plan(config))
        plain_modules = dict(plain.named_modules())
        for name, module in plain_modules.items():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                target = self.net.get_submodule(self._supernet_name(name, ops))
                target.active_out = module.out_channels
            elif isinstance(module, InceptionBlock):
                block = self.net.get_submodule(name)
                block.active = {f"res.{k}" for k in module.res} | {f"dw.{k}" for k in module.dw}
        for name, parts in self._in_parts(config).items():
            self.net.get_submodule(name).in_parts = parts
        self.active_config = config

    def extract(self, config: Config | None = None, *, calibration: Sequence[torch.Tensor] | None = None
                ) -> nn.Module:
        """A plain generator for ``config`` (default: the active one) holding the supernet's weights; with
        ``calibration`` batches, its batch norms' running statistics are re-estimated on them (the
        supernet's shared statistics belong to no subnet in particular)."""
        config = self.space.validate(config if config is not None else self.active_config)
        ops = self._active_ops(config)
        sub = build_generator(self.space.plan(config)).to(next(self.parameters()).device)
        source = self.net.state_dict()
        parts = self._in_parts(config)
        state = {}
        for name, tensor in sub.state_dict().items():
            weights = source[self._supernet_name(name, ops)]
            module = name.rsplit(".", 1)[0]
            if module in parts and name.endswith("weight"):  # a concatenated input: pick each part's channels
                index = torch.cat([torch.arange(start, start + count) for start, count in parts[module]])
                weights = weights[index.to(weights.device)]
            state[name] = weights[tuple(slice(0, n) for n in tensor.shape)].clone()
        sub.load_state_dict(state)
        if calibration is not None and has_batch_norm(sub):
            recalibrate_batch_norm(sub, calibration)
        return sub.train(self.training)
