"""Running a generator on a whole image of any size: one tiler for evaluation and ``nas.apply``.

The image is reflect-padded to the generator's multiple (its total down-sampling), run whole when
it fits ``tile``, and otherwise cut into tiles whose origins lie on that multiple, each read with a
halo of at least the receptive field, so that every kept output pixel sees exactly what it sees in
a whole run (equal within float rounding). Networks with instance (or group/layer) norm layers are
not tile-invariant, since their statistics span the whole input: they always run whole. So do
generators that declare ``whole_image`` and their ``multiple`` (a U-Net, whose receptive field is the
whole image): the image is padded to that multiple and run whole.

Padding is reflect padding, or edge replication where the pad is as large as the image's side
(reflection cannot reach that far), e.g. a 100x100 photo padded to 256x256 for an 8-level U-Net.
Images smaller than the smallest input the generator runs on (its own reflect pads need feature maps
of a few pixels: 8x8 for the shipped sr4x teacher) are padded up to it, so any image of at least one
pixel gives an output of its own size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Norm layers whose statistics depend on the whole input (batch norm in eval mode is pointwise).
_GLOBAL_NORMS = (nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)
PROBE_SIZE = 64


@dataclass(frozen=True)
class Geometry:
    """What tiling needs to know of a generator: its down-sampling multiple and a receptive-field bound."""

    multiple: int
    halo: int  # pixels of context on each side of a tile, >= the receptive-field radius, a multiple of ``multiple``
    tileable: bool  # False where norm statistics span the input (instance norm): run whole
    min_side: int = 0  # the smallest padded side the generator runs on (a multiple of ``multiple``)


def geometry(module: nn.Module, channels: int) -> Geometry:
    """Read off one probe forward pass: each conv's kernel and the scale of its input.

    The radius bound treats every conv as if they were in sequence (parallel branches are counted
    twice), so it can only over-estimate: ``(k - 1) * dilation / 2`` input pixels of each conv,
    times that input's pixel size in image pixels.
    """
    declared = next((m for m in module.modules() if getattr(m, "whole_image", False)), None)
    if declared is not None:
        return Geometry(multiple=declared.multiple, halo=0, tileable=False, min_side=declared.multiple)
    records: list[tuple[int, int]] = []  # (kernel extent, input height)

    def hook(layer, inputs, _output):
        extent = max((k - 1) * d for k, d in zip(layer.kernel_size, layer.dilation))
        records.append((extent, inputs[0].shape[-2]))

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    was_training = module.training
    try:
        module.eval()
        device = next(module.parameters(), torch.empty(0)).device
        with torch.no_grad():
            module(torch.zeros(1, channels, PROBE_SIZE, PROBE_SIZE, device=device))
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    multiple = max((PROBE_SIZE // h for _, h in records), default=1)
    radius = sum(extent / 2 * PROBE_SIZE / h for extent, h in records)
    halo = math.ceil((radius + multiple) / multiple) * multiple
    tileable = not any(isinstance(m, _GLOBAL_NORMS) or "InstanceNorm" in type(m).__name__ for m in module.modules())
    return Geometry(multiple=multiple, halo=halo, tileable=tileable, min_side=_min_side(module, channels, multiple))


def _min_side(module: nn.Module, channels: int, multiple: int) -> int:
    """The smallest square side (a multiple of ``multiple``) the generator runs on: reflect pads inside it
    need feature maps larger than the pad."""
    was_training = module.training
    device = next(module.parameters(), torch.empty(0)).device
    try:
        module.eval()
        for side in range(multiple, PROBE_SIZE, multiple):
            try:
                with torch.no_grad():
                    module(torch.zeros(1, channels, side, side, device=device))
                return side
            except (RuntimeError, ValueError):  # a pad wider than its input; an instance norm of one pixel
                continue
    finally:
        module.train(was_training)
    return PROBE_SIZE


def _pad_to(batch: torch.Tensor, multiple: int, min_side: int = 0) -> torch.Tensor:
    h, w = batch.shape[-2:]
    pad_h, pad_w = max((-h) % multiple, min_side - h), max((-w) % multiple, min_side - w)
    if not (pad_h or pad_w):
        return batch
    mode = "reflect" if min(h, w) > max(pad_h, pad_w) else "replicate"
    return F.pad(batch, (0, pad_w, 0, pad_h), mode=mode)


def _spans(length: int, tile: int, halo: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """(read start, read end, keep start, keep end) along one axis of a padded image."""
    spans = []
    for start in range(0, length, tile):
        end = min(start + tile, length)
        # start, end, halo and length are multiples of ``multiple``: every read origin lies on the stride grid
        read_start = max(0, start - halo)
        read_end = min(length, end + halo)
        spans.append((read_start, read_end, start, end))
    return spans


@torch.no_grad()
def run_image(module: nn.Module, image: torch.Tensor, *, tile: int | None = None, geo: Geometry | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """``module`` on one C x H x W image of any size (eval mode); the output has the input's size, on the CPU.

    ``tile`` is the side of the kept part of each tile (rounded down to the multiple); ``None`` runs
    the image whole. ``geo`` caches ``geometry(module, C)`` across images.
    """
    geo = geo or geometry(module, image.shape[0])
    h, w = image.shape[-2:]
    batch = _pad_to(image[None].to(device), geo.multiple, geo.min_side)
    ph, pw = batch.shape[-2:]
    if tile is None or not geo.tileable or (ph <= tile and pw <= tile):
        return module(batch)[0, :, :h, :w].float().cpu()
    tile = max(geo.multiple, tile - tile % geo.multiple)
    out: torch.Tensor | None = None
    for r0, r1, k0, k1 in _spans(ph, tile, geo.halo, geo.multiple):
        for c0, c1, j0, j1 in _spans(pw, tile, geo.halo, geo.multiple):
            piece = module(batch[..., r0:r1, c0:c1])[0].float().cpu()
            if out is None:
                out = torch.empty(piece.shape[0], ph, pw)
            out[:, k0:k1, j0:j1] = piece[:, k0 - r0:k1 - r0, j0 - c0:j1 - c0]
    return out[:, :h, :w]
