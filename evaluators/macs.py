"""MACs of a built module, counted by fvcore or torchprofile, and its parameter count.

This is the one counting path on libraries; ``SearchSpace.cost`` must agree with it exactly.
Both count one image in eval mode (batch norm in eval is what inference costs).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

CONVENTIONS = ("torchprofile", "fvcore")


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, height: int, width: int, *, convention: str = "fvcore",
               in_channels: int = 3) -> int:
    """MACs of ``module`` on one ``in_channels x height x width`` image, in ``convention``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown MACs convention {convention!r}; allowed: {', '.join(CONVENTIONS)}")
    param = next(module.parameters(), None)
    x = torch.zeros(1, in_channels, height, width, device=param.device if param is not None else "cpu")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if convention == "fvcore":
                from fvcore.nn import FlopCountAnalysis

                analysis = FlopCountAnalysis(module, x)
                analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
                return int(analysis.total())
            from torchprofile import profile_macs

            return int(profile_macs(module, x))
    finally:
        module.train(was_training)


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def format_macs(macs: float) -> str:
    """``2618425344`` -> ``2.618G``."""
    for unit in ("T", "G", "M", "K"):
        if abs(macs) >= _UNITS[unit]:
            return f"{macs / _UNITS[unit]:.4g}{unit}"
    return str(int(macs))


def parse_macs(text: str) -> int:
    """``2.6G``, ``500M``, ``2.6e9`` -> MACs; raises ValueError with what is accepted."""
    raw = str(text).strip()
    number, unit = raw, ""
    if raw and raw[-1].upper() in _UNITS and raw[-1].isalpha():
        number, unit = raw[:-1], raw[-1].upper()
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"cannot read {text!r} as MACs; write e.g. 2.6G, 500M or 2.6e9") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"MACs must be a positive number, got {text!r}; write e.g. 2.6G, 500M or 2.6e9")
    return int(round(value))
