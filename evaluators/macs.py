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
