"""Image quality of a generator: PSNR / SSIM against ground truth and against the teacher (torchmetrics).

FID and KID need a feature extractor (Inception weights cannot be downloaded here): give any
module mapping images to N x d features, e.g. a TorchScript Inception the user has.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def _unit(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], batched."""
    image = image if image.dim() == 4 else image[None]
    return image.clamp(-1, 1).add(1).div(2)


def psnr(output: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (computed on [0, 1], as usually reported)."""
    return float(peak_signal_noise_ratio(_unit(output), _unit(reference), data_range=1.0))


def ssim(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float(structural_similarity_index_measure(_unit(output), _unit(reference), data_range=1.0))


@dataclass
class Quality:
    """Mean over images; ``psnr``/``ssim`` need ground truth, ``fidelity_psnr`` a teacher."""

    psnr: float | None = None
    ssim: float | None = None
    fidelity_psnr: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@torch.no_grad()
def generate(model: nn.Module, inputs: Sequence[torch.Tensor], device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Outputs of ``model`` (eval mode) for images of possibly different sizes, one at a time, on the CPU."""
    was_training = model.training
    model.eval()
    try:
        return [model(x[None].to(device))[0].float().cpu() for x in inputs]
    finally:
        model.train(was_training)


def evaluate(outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor] | None = None,
             teacher_outputs: Sequence[torch.Tensor] | None = None) -> Quality:
    """Quality of generated images against ground truth and/or the teacher's outputs."""
    quality = Quality()
    if targets is not None:
        quality.psnr = _mean([psnr(o, t) for o, t in zip(outputs, targets)])
        quality.ssim = _mean([ssim(o, t) for o, t in zip(outputs, targets)])
    if teacher_outputs is not None:
        quality.fidelity_psnr = _mean([psnr(o, t) for o, t in zip(outputs, teacher_outputs)])
    return quality


def fid_kid(features: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, kid_subset_size: int | None = None
            ) -> tuple[float, float]:
    """FID and KID (mean) between two image batches, with ``features`` as the feature extractor."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    subset = kid_subset_size or min(len(real), len(fake))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fid = FrechetInceptionDistance(feature=features, reset_real_features=True)
        kid = KernelInceptionDistance(feature=features, subsets=10, subset_size=subset)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    return float(fid.compute()), float(kid.compute()[0])
