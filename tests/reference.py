"""Reference generators written from the published layer lists, independent of the package.

pix2pix/CycleGAN ``ResnetGenerator`` (junyanz/pytorch-CycleGAN-and-pix2pix, networks.py) and
GAN Compression's ``MobileResnetGenerator`` with a config of widths. Module indices follow the
originals so that state dicts have the original key layout (``model.1.weight`` ...).
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def norm_layer(kind: str):
    if kind == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, norm, use_dropout: bool, use_bias: bool) -> None:
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=use_bias), norm(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=use_bias), norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, input_nc=3, output_nc=3, ngf=64, norm="instance", use_dropout=False, n_blocks=9):
        super().__init__()
        nl = norm_layer(norm)
        use_bias = norm == "instance"
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, padding=0, bias=use_bias), nl(ngf), nn.ReLU(True)]
        for i in range(2):
            mult = 2 ** i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=use_bias),
                      nl(ngf * mult * 2), nn.ReLU(True)]
        for _ in range(n_blocks):
            model += [ResnetBlock(ngf * 4, nl, use_dropout, use_bias)]
        for i in range(2):
            mult = 2 ** (2 - i)
            model += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1,
                                         bias=use_bias), nl(ngf * mult // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class SeparableConv2d(nn.Module):
    def __init__(self, cin, cout, norm, use_bias):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cin, 3, groups=cin, bias=use_bias), norm(cin),
                                  nn.Conv2d(cin, cout, 1, bias=use_bias))

    def forward(self, x):
        return self.conv(x)


class MobileResnetBlock(nn.Module):
    def __init__(self, ic, oc, norm, use_bias):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), SeparableConv2d(ic, oc, norm, use_bias), norm(oc), nn.ReLU(True),
            nn.ReflectionPad2d(1), SeparableConv2d(oc, ic, norm, use_bias), norm(ic))

    def forward(self, x):
        return x + self.conv_block(x)


class SubMobileResnetGenerator(nn.Module):
    """GAN Compression's student for a config c0..c7 (see the resnet space file)."""

    def __init__(self, channels, input_nc=3, output_nc=3, norm="instance", n_blocks=9):
        super().__init__()
        nl = norm_layer(norm)
        use_bias = norm == "instance"
        c = channels
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, c[0], 7, bias=use_bias), nl(c[0]), nn.ReLU(True)]
        model += [nn.Conv2d(c[0], 2 * c[1], 3, stride=2, padding=1, bias=use_bias), nl(2 * c[1]), nn.ReLU(True)]
        model += [nn.Conv2d(2 * c[1], 4 * c[2], 3, stride=2, padding=1, bias=use_bias), nl(4 * c[2]), nn.ReLU(True)]
        per = n_blocks // 3
        for group, count in enumerate([per, per, n_blocks - 2 * per]):
            model += [MobileResnetBlock(4 * c[2], 4 * c[3 + group], nl, use_bias) for _ in range(count)]
        model += [nn.ConvTranspose2d(4 * c[2], 2 * c[6], 3, stride=2, padding=1, output_padding=1, bias=use_bias),
                  nl(2 * c[6]), nn.ReLU(True)]
        model += [nn.ConvTranspose2d(2 * c[6], c[7], 3, stride=2, padding=1, output_padding=1, bias=use_bias),
                  nl(c[7]), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(c[7], output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


def randomize_norms(module: nn.Module, seed: int = 0) -> None:
    """Give batch norms non-trivial statistics and affine weights, so that a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


class UnetSkipConnectionBlock(nn.Module):
    """pix2pix's nested U-Net block: down path, the inner block, up path, and the skip concatenation.
    The in-place LeakyReLU that opens the down path also activates the skip, as in the original."""

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm="batch", use_dropout=False):
        super().__init__()
        self.outermost = outermost
        nl = norm_layer(norm)
        use_bias = norm == "instance"
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu, downnorm = nn.LeakyReLU(0.2, True), nl(inner_nc)
        uprelu, upnorm = nn.ReLU(True), nl(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """pix2pix's UnetGenerator (unet_256: num_downs 8; unet_128: 7)."""

    def __init__(self, input_nc=3, output_nc=3, num_downs=8, ngf=64, norm="batch", use_dropout=False):
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                                             norm=norm)

    def forward(self, x):
        return self.model(x)
