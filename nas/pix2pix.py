"""Teachers from pytorch-CycleGAN-and-pix2pix: ``latest_net_G.pth`` / ``*_net_G_A.pth`` ResnetGenerators.

Their state dicts (keys ``model.1.weight`` ... ) map one to one onto the plain resnet family of
this project: the residual block bodies have the same layout (``conv_block.N`` -> ``body.N``,
with or without dropout), so an imported teacher computes exactly what the original does.
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


def import_pix2pix(state: Any, *, source: str) -> tuple[SearchSpace, Config, torch.nn.Module]:
    """Build the teacher a pix2pix ResnetGenerator state dict describes and load its weights:
    (its one-config space, that config, the module)."""
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source} is not a generator checkpoint: expected a pix2pix ResnetGenerator state dict "
                        "(keys model.1.weight ...) or a checkpoint written by nas.train / nas.export")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    indices = {int(m.group(1)) for k in state if (m := _KEY.match(k))}
    block_ids = sorted({int(m.group(1)) for k in state if (m := _KEY.match(k)) and "conv_block" in m.group(2)})
    if "model.1.weight" not in state or not block_ids:
        raise UserError(f"{source} is not a pix2pix ResnetGenerator state dict: "
                        f"{'no model.1.weight' if 'model.1.weight' not in state else 'no residual blocks (conv_block keys)'}"
                        f"; found keys like {', '.join(list(state)[:3])}")
    blocks = len(block_ids)
    norm = "batch" if "model.2.weight" in state else "instance"
    # With dropout the second block conv moves from conv_block.5 to conv_block.6 (a 4-d weight there).
    second = state.get(f"model.{block_ids[0]}.conv_block.6.weight")
    dropout = 0.5 if second is not None and second.ndim == 4 else 0.0
    if norm == "instance":  # checkpoints of old torch versions kept unused instance-norm statistics
        state = {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    ngf, in_channels = state["model.1.weight"].shape[:2]
    last = max(indices)
    out_channels = state[f"model.{last}.weight"].shape[0] if f"model.{last}.weight" in state else in_channels
    text = teacher_space_yaml(ngf=ngf, blocks=blocks, norm=norm, dropout=dropout,
                              in_channels=in_channels, out_channels=out_channels)
    space = SearchSpace.from_text(text, source=f"{source} (imported)", name="pix2pix_resnet")
    config = space.max_config()
    module = space.build(config)

    names = _pix2pix_names(blocks)
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
        raise UserError(f"{source} does not fit a pix2pix resnet_{blocks}blocks generator (ngf {ngf}, {norm} norm): "
                        + "; ".join(parts))
    for ours, theirs in theirs_by_ours.items():
        if state[theirs].shape != expected[ours].shape:
            raise UserError(f"{source}: {theirs} has shape {list(state[theirs].shape)} but a resnet_{blocks}blocks "
                            f"generator with ngf {ngf} expects {list(expected[ours].shape)}")
    module.load_state_dict({ours: state[theirs] for ours, theirs in theirs_by_ours.items()})
    return space, config, module.eval()
