"""Channel groups of a space's widest generator, and the one way an arbitrary keep-set of channels
becomes a config of the space with inherited weights.

Pruning methods (CAT's one-step pruning, DMAD's masks) keep arbitrary channel subsets; a config of a
space keeps the first k channels of every layer. ``inherit`` bridges the two: it reorders every
group's channels by a score (kept channels first), writing the order into every tensor that carries
the group (the producer's output rows, every consumer's input columns, norm parameters, and for the
residual trunk every block that reads or writes it), then ``Supernet.extract`` slices the first k,
as for any subnet. So there is one weight-copying path.

A *group* is a set of channels that must be kept or dropped together: the output of the stem, of
each down/up-sampling layer, the residual trunk (down2's output and every block's output), the
hidden channels of a resnet group (one per config site, shared by the blocks of that group), and the
hidden channels of each inception branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spaces.modules import ElementwiseInstanceNorm, Generator, InceptionBlock, ResnetBlock, build_generator
from spaces.plan import resnet_group_sizes
from spaces.space import Config, SearchSpace

NORMS = (nn.BatchNorm2d, nn.InstanceNorm2d, ElementwiseInstanceNorm, nn.Identity)


@dataclass
class ChannelGroup:
    """Channels kept or dropped together; ``site`` is the config site their width sets."""

    name: str
    site: str
    size: int  # channels in the widest generator
    scale: int = 1  # channels per unit of the site's choices
    tensors: list[tuple[str, int]] = field(default_factory=list)  # (state-dict name, channel dim)
    mask_points: list[str] = field(default_factory=list)  # modules whose output carries the group (after norms)
    # per layer that writes the group first: (its conv, its affine norm or None, the module after which
    # its output is taken: the norm, or the Identity standing for none)
    primaries: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    branch: str | None = None  # an inception branch's module: its whole output goes when no channel is left
    choices: tuple[int, ...] = ()  # the site's choices (in units of ``scale`` channels)

    def count_to_choice(self, count: int) -> int:
        """The site's choice nearest ``count`` channels (ties up; 0 only where 0 is a choice)."""
        return min(self.choices, key=lambda c: (abs(c * self.scale - count), -c))


class _Tracer:
    """Walks the widest generator in forward order, assigning each tensor's channel dims to groups."""

    def __init__(self, space: SearchSpace, generator: Generator) -> None:
        self.space, self.generator = space, generator
        self.groups: dict[str, ChannelGroup] = {}

    def group(self, name: str, site: str, scale: int) -> ChannelGroup:
        if name not in self.groups:
            choices = tuple(int(c) for c in next(s for s in self.space.sites if s.name == site).choices)
            self.groups[name] = ChannelGroup(name, site, 0, scale, choices=choices)
        return self.groups[name]

    def sequence(self, prefix: str, module: nn.Module, current: ChannelGroup | None,
                 outputs: list[ChannelGroup | None], *, primary: bool = True) -> ChannelGroup | None:
        """Trace the leaves of ``module`` (run in registration order); each full conv's output goes to the
        next group of ``outputs``; depthwise convs and norms stay in the current group."""
        leaves = [(f"{prefix}.{n}" if n else prefix, m) for n, m in module.named_modules() if not list(m.children())]
        for i, (name, leaf) in enumerate(leaves):
            if not isinstance(leaf, (nn.Conv2d, nn.ConvTranspose2d)):
                if isinstance(leaf, NORMS[:2]) and current is not None:
                    current.tensors += [(f"{name}.{p}", 0) for p, _ in leaf.named_parameters()]
                    current.tensors += [(f"{name}.{b}", 0) for b, t in leaf.named_buffers() if t.dim() == 1]
                continue
            follower = leaves[i + 1] if i + 1 < len(leaves) else None
            norm = follower if follower is not None and isinstance(follower[1], NORMS) else None
            transpose = isinstance(leaf, nn.ConvTranspose2d)
            if not transpose and leaf.groups > 1:  # depthwise: its filters belong to its input's channels
                current.tensors += [(f"{name}.weight", 0)] + ([(f"{name}.bias", 0)] if leaf.bias is not None else [])
                if norm is not None:
                    current.mask_points.append(norm[0])
                continue
            if current is not None:
                current.tensors.append((f"{name}.weight", 0 if transpose else 1))
            current = outputs.pop(0)
            if current is None:
                continue
            current.size = leaf.out_channels
            current.tensors.append((f"{name}.weight", 1 if transpose else 0))
            if leaf.bias is not None:
                current.tensors.append((f"{name}.bias", 0))
            if norm is not None:
                current.mask_points.append(norm[0])
            affine = norm is not None and getattr(norm[1], "affine", False)
            current.primaries.append((name, norm[0] if affine else None, norm[0] if norm is not None else None))
        return current

    def trace(self) -> dict[str, ChannelGroup]:
        spec, g = self.space.spec, self.generator
        width = {s: self.group(s, s, spec.widths[s].scale) for s in ("stem", "down1", "trunk", "up1", "up2")}
        current = self.sequence("stem", g.stem, None, [width["stem"]])
        current = self.sequence("down1", g.down1, current, [width["down1"]])
        trunk = self.sequence("down2", g.down2, current, [width["trunk"]])
        owners = []
        if spec.family == "resnet":
            for index, count in enumerate(resnet_group_sizes(spec.blocks, len(spec.groups))):
                owners += [(f"group{index + 1}", spec.groups[index].scale)] * count
        for i, block in enumerate(g.trunk):
            prefix = f"trunk.{i}"
            if isinstance(block, ResnetBlock):
                site, scale = owners[i]
                self.sequence(f"{prefix}.body", block.body, trunk, [self.group(site, site, scale), trunk])
                # the block's output conv writes the trunk: not a primary (CAT: the trunk's width is down2's)
                trunk.primaries.pop()
            elif isinstance(block, InceptionBlock):
                for kind, branches in (("res", block.res), ("dw", block.dw)):
                    for key, branch in branches.items():
                        site = f"b{i}.{kind}{key[1:]}"
                        hidden = self.group(site, site, 1)
                        hidden.branch = f"{prefix}.{kind}.{key}"
                        self.sequence(hidden.branch, branch, trunk, [hidden, trunk])
                        trunk.primaries.pop()
                        trunk.mask_points.append(f"{prefix}.norm")
                trunk.tensors += [(f"{prefix}.norm.{p}", 0) for p, _ in block.norm.named_parameters()]
                trunk.tensors += [(f"{prefix}.norm.{b}", 0) for b, t in block.norm.named_buffers() if t.dim() == 1]
                trunk.mask_points = list(dict.fromkeys(trunk.mask_points))
        current = self.sequence("up1", g.up1, trunk, [width["up1"]])
        current = self.sequence("up2", g.up2, current, [width["up2"]])
        self.sequence("head", g.head, current, [None])
        return self.groups


def widest_generator(space: SearchSpace, device: torch.device | str = "meta") -> Generator:
    """The plain generator whose every width is the space's largest (the supernet's layout)."""
    from spaces.supernet import widest_plan

    with torch.device(device):
        return build_generator(widest_plan(space))


def channel_groups(space: SearchSpace) -> dict[str, ChannelGroup]:
    """Every channel group of the space's widest generator, by name (resnet and inception families)."""
    if space.family not in ("resnet", "inception"):
        # agd cells change operators, not just widths: their channels are not groups of one layout
        # (prune and dmask refuse agd spaces with a one-line error before they get here)
        raise ValueError(f"channel groups exist for resnet and inception spaces, not {space.family}")
    return _Tracer(space, widest_generator(space)).trace()


def derive_config(space: SearchSpace, groups: dict[str, ChannelGroup], counts: dict[str, int]) -> Config:
    """The config whose widths are the kept channel counts rounded to the nearest choices."""
    config = space.max_config()
    for name, count in counts.items():
        config[groups[name].site] = groups[name].count_to_choice(int(count))
    return space.validate(config)


def permute(state: dict[str, torch.Tensor], groups: dict[str, ChannelGroup],
            scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (of the widest generator) with each group's channels in descending order of its score."""
    state = dict(state)
    for name, group in groups.items():
        order = torch.argsort(scores[name].detach().float().cpu(), descending=True, stable=True)
        for tensor, dim in group.tensors:
            state[tensor] = state[tensor].index_select(dim, order.to(state[tensor].device))
    return state


def _last_conv(modules: dict[str, nn.Module], branch: str) -> str:
    return [n for n, m in modules.items() if n.startswith(branch + ".") and isinstance(m, nn.Conv2d)][-1]


def inherit(space: SearchSpace, widest: nn.Module, scores: dict[str, torch.Tensor], config: Config,
            groups: dict[str, ChannelGroup] | None = None) -> Generator:
    """The generator of ``config`` holding, in every group, the weights of the highest-scoring channels
    of ``widest`` (a generator of the widest plan): permute, then ``Supernet.extract``."""
    from spaces.supernet import Supernet

    groups = groups if groups is not None else channel_groups(space)
    supernet = Supernet(space).to(next(widest.parameters()).device)
    supernet.net.load_state_dict(permute(widest.state_dict(), groups, scores))
    return supernet.extract(config).train(widest.training)


class ChannelMasks:
    """Per-channel multipliers on a widest generator, one vector per group, applied by forward hooks at
    every point where the group's channels are produced (after the norm, before the activation). A
    branch whose channels are all zero contributes nothing, and a block with no live branch is the
    identity, so a binary mask computes exactly what the pruned network does."""

    def __init__(self, generator: nn.Module, groups: dict[str, ChannelGroup]) -> None:
        self.groups, self.values = groups, {}
        modules = dict(generator.named_modules())
        self.handles = []
        for name, group in groups.items():
            for point in group.mask_points:
                self.handles.append(modules[point].register_forward_hook(self._scale(name)))
            if group.branch is not None:
                last = modules[_last_conv(modules, group.branch)]
                self.handles.append(last.register_forward_hook(self._gate([name])))
        blocks: dict[str, list[str]] = {}
        for name, group in groups.items():
            if group.branch is not None:
                blocks.setdefault(group.branch.rsplit(".", 2)[0], []).append(name)
        for block, branch_groups in blocks.items():
            self.handles.append(modules[f"{block}.norm"].register_forward_hook(self._gate(branch_groups)))

    def set(self, values: dict[str, torch.Tensor]) -> None:
        """The multipliers of the next forward passes (each a vector of the group's size)."""
        self.values = values

    def _scale(self, name: str):
        def hook(module, inputs, output):
            mask = self.values.get(name)
            return output if mask is None else output * mask.view(1, -1, 1, 1)
        return hook

    def _gate(self, names: list[str]):
        def hook(module, inputs, output):
            masks = [self.values[n] for n in names if n in self.values]
            if len(masks) < len(names):
                return output
            alive = torch.stack([(m != 0).any() for m in masks]).any()
            return output * alive.to(output.dtype)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
