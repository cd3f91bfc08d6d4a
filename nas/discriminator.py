"""PatchGAN discriminator with the layout of pix2pix's NLayerDiscriminator (its checkpoints load)."""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN for n_layers=3: a grid of real/fake scores, one per receptive field."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        bias = norm == "instance"

        def norm_layer(c: int) -> nn.Module:
            return nn.InstanceNorm2d(c) if norm == "instance" else nn.BatchNorm2d(c)

        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=bias), norm_layer(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        self.config = {"in_channels": in_channels, "ndf": ndf, "n_layers": n_layers, "norm": norm}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def lsgan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss (the pix2pix/CycleGAN default)."""
    return ((scores - (1.0 if real else 0.0)) ** 2).mean()


def discriminator_from(source: str | None, out_channels: int, *, ndf: int) -> PatchDiscriminator:
    """A PatchGAN initialised from ``source``: a teacher's training checkpoint (its discriminator),
    a pix2pix ``*_net_D*.pth`` state dict, or nothing (fresh, ``ndf`` wide)."""
    from nas.checkpoint import FORMAT, TRAIN_FORMAT, load_weights, safe_load
    from spaces.errors import UserError

    state, config = None, {"ndf": ndf}
    if source:
        record = safe_load(source)
        if not isinstance(record, dict):
            raise UserError(f"discriminator {source} holds a {type(record).__name__}, not a PatchGAN state dict or a "
                            "teacher's training checkpoint")
        if record.get("format") == FORMAT:
            raise UserError(f"discriminator {source} is a generator checkpoint, not a PatchGAN state dict or a teacher's "
                            "training checkpoint")
        if record.get("format") == TRAIN_FORMAT:
            if record.get("discriminator"):
                state, config = record["discriminator"], record.get("discriminator_config") or config
        else:
            state = record
            weight = record.get("model.0.weight")
            config = {"ndf": weight.shape[0]} if isinstance(weight, torch.Tensor) and weight.dim() == 4 else config
        if not isinstance(config, dict) or not isinstance(config.get("ndf"), int) or not 1 <= config["ndf"] <= 4096:
            raise UserError(f"discriminator {source}: its configuration {config!r} is not a PatchGAN's")
    disc = PatchDiscriminator(out_channels, ndf=config["ndf"], n_layers=config.get("n_layers", 3),
                              norm=config.get("norm", "instance"))
    if state is not None:
        load_weights(disc, state, source=f"discriminator {source}", what="state dict")
    return disc
