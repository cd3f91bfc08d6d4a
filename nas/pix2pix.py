"""Teachers from pytorch-CycleGAN-and-pix2pix: ``latest_net_G.pth`` / ``*_net_G_A.pth`` generators.

A ResnetGenerator's state dict (keys ``model.1.weight`` ... ) maps one to one onto the plain resnet
family of this project: the residual block bodies have the same layout (``conv_block.N`` -> ``body.N``,
with or without dropout). A UnetGenerator's (``unet_256``, ``unet_128``: nested blocks, keys
``model.model.0.weight``, ``model.model.1.model.1.weight`` ...) maps onto the unet family, level by
level. Either way an imported teacher computes exactly what the original does in eval mode.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from spaces.errors import UserError
from spaces.space import Config, SearchSpace

_KEY = re.compile(r"^model\.(\d+)\.(.+)$")
_GROUPS = 3


def teacher_space_yaml(*, ngf: int, blocks: int, norm: str, dropout: float, in_channels: int,
                       out_channels: int, resolution: int = 256) -> str:
    """The space file (one config) of a pix2pix ResnetGenerator, in GAN Compression units."""
    width = "{choices: [%d], scale: %d}"
    groups = "\n".join(f"  - {width % (ngf, 4)}" for _ in range(min(_GROUPS, blocks)))
    return f"""# pix2pix/CycleGAN ResnetGenerator (resnet_{blocks}blocks, ngf {ngf}) imported as a teacher.
family: resnet
description: imported pix2pix ResnetGenerator
block: plain
in_channels: {in_channels}
out_channels: {out_channels}
norm: {norm}
resolution: {resolution}
blocks: {blocks}
dropout: {dropout}
widths:
  stem:  {width % (ngf, 1)}
  down1: {width % (ngf, 2)}
  trunk: {width % (ngf, 4)}
  up1:   {width % (ngf, 2)}
  up2:   {width % (ngf, 1)}
groups:
{groups}
"""


def unet_teacher_space_yaml(*, ngf: int, levels: int, norm: str, in_channels: int, out_channels: int) -> str:
    """The space file (one config) of a pix2pix UnetGenerator with ``levels`` down-samplings."""
    widths = [ngf * min(2 ** i, 8) for i in range(levels)]
    down = "\n".join(f"  - {{choices: [{w}]}}" for w in widths)
    up = "\n".join(f"  - {{choices: [{w}]}}" for w in widths[:-1])
    return f"""# pix2pix UnetGenerator (unet with {levels} downs, ngf {ngf}) imported as a teacher. A state dict
# cannot tell whether it trained with dropout (no weights): pix2pix's default (0.5) is assumed.
family: unet
description: imported pix2pix UnetGenerator
in_channels: {in_channels}
out_channels: {out_channels}
norm: {norm}
resolution: {2 ** levels}
dropout: 0.5
down:
{down}
up:
{up}
"""


def _unet_names(levels: int) -> dict[str, str]:
    """Module prefixes of the original nested UnetGenerator -> this project's ``UnetGenerator``."""
    names = {"model.model.0": "down.0.0", "model.model.3": "up.0.1"}
    seq = "model.model"
    for level in range(1, levels):
        seq = f"{seq}.1.model" if level == 1 else f"{seq}.3.model"
        names[f"{seq}.1"] = f"down.{level}.0"
        if level < levels - 1:  # a middle block: down conv, norm, submodule, ReLU, up conv, norm
            names.update({f"{seq}.2": f"down.{level}.1", f"{seq}.5": f"up.{level}.1", f"{seq}.6": f"up.{level}.2"})
        else:  # the innermost: LeakyReLU, down conv, ReLU, up conv, norm
            names.update({f"{seq}.3": f"up.{level}.1", f"{seq}.4": f"up.{level}.2"})
    return names


def _unet_levels(state: dict[str, torch.Tensor]) -> int:
    """The number of levels of a nested UnetGenerator state dict: the depth of its down convs."""
    levels, seq = 1, "model.model.1.model"
    while f"{seq}.1.weight" in state:
        levels, seq = levels + 1, f"{seq}.3.model"
    return levels


def _pix2pix_names(blocks: int) -> dict[str, str]:
    """Module prefixes of the original generator -> this project's ``Generator``."""
    names = {"model.1": "stem.1", "model.2": "stem.2", "model.4": "down1.0", "model.5": "down1.1",
             "model.7": "down2.0", "model.8": "down2.1"}
    for j in range(blocks):
        names[f"model.{10 + j}.conv_block"] = f"trunk.{j}.body"
    up = 10 + blocks
    names.update({f"model.{up}": "up1.0", f"model.{up + 1}": "up1.1", f"model.{up + 3}": "up2.0",
                  f"model.{up + 4}": "up2.1", f"model.{up + 7}": "head.1"})
    return names


def _to_ours(key: str, names: dict[str, str]) -> str | None:
    for theirs, ours in names.items():
        if key.startswith(theirs + "."):
            return ours + key[len(theirs):]
    return None


def _drop_instance_statistics(state: dict[str, torch.Tensor], norm: str) -> dict[str, torch.Tensor]:
    if norm != "instance":
        return state
    # checkpoints of old torch versions kept unused instance-norm statistics
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def import_pix2pix(state: Any, *, source: str) -> tuple[SearchSpace, Config, torch.nn.Module]:
    """Build the teacher a pix2pix ResnetGenerator or UnetGenerator state dict describes and load its
    weights: (its one-config space, that config, the module)."""
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source} is not a generator checkpoint: expected a pix2pix ResnetGenerator or UnetGenerator "
                        "state dict (keys model.1.weight ... or model.model.0.weight ...) or a checkpoint written by "
                        "nas.train / nas.export")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "model.model.0.weight" in state:
        return _import_unet(state, source=source)
    indices = {int(m.group(1)) for k in state if (m := _KEY.match(k))}
    block_ids = sorted({int(m.group(1)) for k in state if (m := _KEY.match(k)) and "conv_block" in m.group(2)})
    if "model.1.weight" not in state or not block_ids:
        raise UserError(f"{source} is not a pix2pix ResnetGenerator or UnetGenerator state dict: "
                        f"{'no model.1.weight' if 'model.1.weight' not in state else 'no residual blocks (conv_block keys)'}"
                        f" (a ResnetGenerator's) and no model.model.0.weight (a UnetGenerator's); found keys like "
                        f"{', '.join(list(state)[:3])}")
    blocks = len(block_ids)
    norm = "batch" if "model.2.weight" in state else "instance"
    # With dropout the second block conv moves from conv_block.5 to conv_block.6 (a 4-d weight there).
    second = state.get(f"model.{block_ids[0]}.conv_block.6.weight")
    dropout = 0.5 if second is not None and second.ndim == 4 else 0.0
    state = _drop_instance_statistics(state, norm)
    ngf, in_channels = state["model.1.weight"].shape[:2]
    last = max(indices)
    out_channels = state[f"model.{last}.weight"].shape[0] if f"model.{last}.weight" in state else in_channels
    text = teacher_space_yaml(ngf=ngf, blocks=blocks, norm=norm, dropout=dropout,
                              in_channels=in_channels, out_channels=out_channels)
    space = SearchSpace.from_text(text, source=f"{source} (imported)", name="pix2pix_resnet")
    config = space.max_config()
    module = space.build(config)

    what = f"a pix2pix resnet_{blocks}blocks generator (ngf {ngf}, {norm} norm)"
    return space, config, _load_mapped(module, state, _pix2pix_names(blocks), source=source, what=what)


def _import_unet(state: dict[str, torch.Tensor], *, source: str) -> tuple[SearchSpace, Config, torch.nn.Module]:
    levels = _unet_levels(state)
    norm = "batch" if "model.model.1.model.2.weight" in state else "instance"
    state = _drop_instance_statistics(state, norm)
    ngf, in_channels = state["model.model.0.weight"].shape[:2]
    out_channels = state["model.model.3.weight"].shape[1] if "model.model.3.weight" in state else in_channels
    text = unet_teacher_space_yaml(ngf=ngf, levels=levels, norm=norm, in_channels=in_channels,
                                   out_channels=out_channels)
    space = SearchSpace.from_text(text, source=f"{source} (imported)", name=f"pix2pix_unet_{2 ** levels}")
    config = space.max_config()
    what = f"a pix2pix unet_{2 ** levels} generator ({levels} downs, ngf {ngf}, {norm} norm)"
    return space, config, _load_mapped(space.build(config), state, _unet_names(levels), source=source, what=what)


def _load_mapped(module: torch.nn.Module, state: dict[str, torch.Tensor], names: dict[str, str], *, source: str,
                 what: str) -> torch.nn.Module:
    """Load ``state`` (original key layout) into ``module`` through the prefix map ``names``; a UserError
    names the keys or shapes that do not fit."""
    expected = module.state_dict()
    theirs_by_ours = {}
    unexpected = []
    for key in state:
        ours = _to_ours(key, names)
        if ours is None or ours not in expected:
            unexpected.append(key)
        else:
            theirs_by_ours[ours] = key
    inverse = {ours: theirs for theirs, ours in names.items()}
    for key in expected:  # checkpoints from torch < 0.4.1 have no batch counters; they are not weights
        if key.endswith("num_batches_tracked") and key not in theirs_by_ours:
            theirs_by_ours[key] = key
            state[key] = expected[key]
    missing = [next((t + k[len(o):] for o, t in inverse.items() if k.startswith(o + ".")), k)
               for k in expected if k not in theirs_by_ours]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {', '.join(unexpected[:6])}{' ...' if len(unexpected) > 6 else ''}")
        raise UserError(f"{source} does not fit {what}: " + "; ".join(parts))
    for ours, theirs in theirs_by_ours.items():
        if state[theirs].shape != expected[ours].shape:
            raise UserError(f"{source}: {theirs} has shape {list(state[theirs].shape)} but {what} "
                            f"expects {list(expected[ours].shape)}")
    module.load_state_dict({ours: state[theirs] for ours, theirs in theirs_by_ours.items()})
    return module.eval()
