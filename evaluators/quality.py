"""Image quality of a generator, in one place: whole images of a split (``EvalSet``), PSNR / SSIM against
ground truth and against the teacher (torchmetrics), and the share of the teacher's gain over the
baseline (bicubic for super-resolution) that a student keeps.

FID and KID: with the standard FID Inception (``evaluators.fid``) a ``Reference`` given a ``FidJudge`` scores
students by FID against the real images of the target domain (lower is better); ``fid_kid`` takes any module
mapping images to N x d features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from evaluators.tiling import geometry, run_image

if TYPE_CHECKING:
    from evaluators.fid import FidJudge


def _unit(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], batched."""
    image = image if image.dim() == 4 else image[None]
    return image.clamp(-1, 1).add(1).div(2)


def psnr(output: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (computed on [0, 1], as usually reported)."""
    # torchmetrics is imported where it is used: importing it takes 2.7 s (torchvision, scipy), which every
    # command would pay before it could even report a bad argument
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(_unit(output), _unit(reference), data_range=1.0))


def ssim(output: torch.Tensor, reference: torch.Tensor) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(_unit(output), _unit(reference), data_range=1.0))


# How quality is measured; results of another protocol are not comparable (a search refuses to resume them).
PROTOCOL = "whole images of the split; share of the teacher's gain over bicubic"
# Metrics a search can minimise; every other one is maximised.
LOWER_IS_BETTER = frozenset({"fid", "kid"})
# Below this gain of the teacher over the baseline (dB, mean over a split) a share would be mostly noise.
MIN_TEACHER_GAIN_DB = 0.5


@dataclass(frozen=True, eq=False)
class EvalSet:
    """Whole images of one split. ``targets`` is None without ground truth (the teacher's outputs
    stand in); ``baseline`` names what the inputs themselves are where they are a zero-MACs answer
    (``"bicubic"`` for super-resolution), else None."""

    split: str
    names: tuple[str, ...]
    inputs: tuple[torch.Tensor, ...]
    targets: tuple[torch.Tensor, ...] | None
    baseline: str | None = None

    def __len__(self) -> int:
        return len(self.inputs)


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (PSNR, SSIM) or a smaller one (FID, KID)."""
    return metric not in LOWER_IS_BETTER


def gain_share(student_psnr: float | None, baseline_psnr: float | None, teacher_psnr: float | None) -> float | None:
    """The share of the teacher's gain over the baseline that a student keeps:
    ``(student - baseline) / (teacher - baseline)``, any sign; None where it is undefined (no baseline or
    ground truth) or where the teacher is less than ``MIN_TEACHER_GAIN_DB`` above the baseline."""
    if student_psnr is None or baseline_psnr is None or teacher_psnr is None:
        return None
    gain = teacher_psnr - baseline_psnr
    if gain < MIN_TEACHER_GAIN_DB:
        return None
    return (student_psnr - baseline_psnr) / gain


@dataclass
class Quality:
    """Means over the images of a split, and the same per image.

    ``psnr``/``ssim`` need ground truth, ``fidelity_psnr`` (PSNR against the teacher's output) a
    teacher, ``share`` ground truth, a baseline and a teacher at least ``MIN_TEACHER_GAIN_DB`` above it.
    ``fid``/``kid`` (of the whole set, with ``fid_images`` generated and ``fid_real_images`` real images) need
    a ``FidJudge``; ``target`` names the metric chosen as the score (``"fid"``), None for the PSNR default.
    """

    psnr: float | None = None
    ssim: float | None = None
    fidelity_psnr: float | None = None
    share: float | None = None
    per_image: dict[str, dict[str, float | None]] = field(default_factory=dict)
    fid: float | None = None
    kid: float | None = None
    fid_images: int | None = None
    fid_real_images: int | None = None
    target: str | None = None

    @property
    def metric(self) -> str:
        """The metric that ``score`` is: ``target`` where one was chosen, else PSNR against ground truth where
        there is one, else against the teacher."""
        if self.target is not None:
            return self.target
        return "psnr" if self.psnr is not None else "fidelity_psnr"

    @property
    def score(self) -> float | None:
        """The one number a search optimises; ``metric`` says which it is, ``higher_is_better`` which way."""
        return getattr(self, self.metric)

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)

    def worse_than(self, score: float) -> bool:
        """Whether this quality's score is worse than ``score`` (of the same metric), in its direction."""
        return self.score < score if self.higher_is_better else self.score > score

    def as_dict(self, *, per_image: bool = False) -> dict[str, Any]:
        means = {"psnr": self.psnr, "ssim": self.ssim, "fidelity_psnr": self.fidelity_psnr, "share": self.share}
        if self.fid is not None:
            means.update(fid=self.fid, kid=self.kid, fid_images=self.fid_images, fid_real_images=self.fid_real_images)
        return {**means, "per_image": self.per_image} if per_image else means


def format_share(share: float | None) -> str:
    """A share as a percentage; "n/a" where it is undefined (None, or NaN read back from a table)."""
    return "n/a" if share is None or share != share else f"{100 * float(share):.0f}%"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@torch.no_grad()
def generate(model: nn.Module, inputs: Sequence[torch.Tensor], device: torch.device | str = "cpu", *,
             tile: int | None = None) -> list[torch.Tensor]:
    """Outputs of ``model`` (eval mode, moved to ``device``) for whole images of any size, one at a
    time, through the one tiler that ``nas.apply`` uses; returned on the CPU."""
    if not inputs:
        return []
    was_training = model.training
    model.to(device).eval()
    try:
        geo = geometry(model, inputs[0].shape[0])
        return [run_image(model, x, tile=tile, geo=geo, device=device) for x in inputs]
    finally:
        model.train(was_training)


def evaluate(outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor] | None = None,
             teacher_outputs: Sequence[torch.Tensor] | None = None, *, names: Sequence[str] | None = None) -> Quality:
    """Quality of generated images against ground truth and/or the teacher's outputs."""
    names = list(names) if names is not None else [str(i) for i in range(len(outputs))]
    per_image: dict[str, dict[str, float | None]] = {}
    for i, (name, output) in enumerate(zip(names, outputs)):
        per_image[name] = {
            "psnr": psnr(output, targets[i]) if targets is not None else None,
            "ssim": ssim(output, targets[i]) if targets is not None else None,
            "fidelity_psnr": psnr(output, teacher_outputs[i]) if teacher_outputs is not None else None,
        }

    def mean(key: str) -> float | None:
        return _mean([v[key] for v in per_image.values() if v[key] is not None])

    return Quality(psnr=mean("psnr"), ssim=mean("ssim"), fidelity_psnr=mean("fidelity_psnr"), per_image=per_image)


@dataclass
class Reference:
    """What students are judged against on one eval set: the teacher's outputs and quality, and the
    baseline's (bicubic) quality where the eval set has one. Computed once per eval set. With ``fid``,
    students are scored by FID against its real images (and get no share of the teacher's PSNR gain)."""

    eval_set: EvalSet
    teacher_outputs: list[torch.Tensor]
    teacher: Quality
    baseline: Quality | None
    fid: FidJudge | None = None

    @property
    def teacher_gain(self) -> float | None:
        """Mean PSNR of the teacher minus the baseline's (dB); None without ground truth or baseline."""
        if self.baseline is None or self.teacher.psnr is None:
            return None
        return self.teacher.psnr - self.baseline.psnr

    def judge(self, outputs: Sequence[torch.Tensor]) -> Quality:
        """A student's quality on this eval set, with its share of the teacher's gain (mean and per image)."""
        s = self.eval_set
        quality = evaluate(outputs, s.targets, self.teacher_outputs, names=s.names)
        if self.fid is not None:
            # FID is the score: a share of the teacher's PSNR gain would rank by another measure
            return with_fid(quality, self.fid, outputs)
        if self.baseline is not None:
            quality.share = gain_share(quality.psnr, self.baseline.psnr, self.teacher.psnr)
            for name, values in quality.per_image.items():
                values["share"] = gain_share(values["psnr"], self.baseline.per_image[name]["psnr"],
                                             self.teacher.per_image[name]["psnr"])
        return quality


def with_fid(quality: Quality, judge: FidJudge, outputs: Sequence[torch.Tensor]) -> Quality:
    """``quality`` scored by FID (KID beside it) of ``outputs`` against the judge's real images."""
    result = judge.measure(outputs)
    quality.fid, quality.kid = result.fid, result.kid
    quality.fid_images, quality.fid_real_images = result.images, result.real_images
    quality.target = "fid"
    return quality


def reference(teacher: nn.Module, eval_set: EvalSet, device: torch.device | str = "cpu", *,
              tile: int | None = None, fid: FidJudge | None = None, teacher_fid: bool = False) -> Reference:
    """The teacher's outputs and quality on ``eval_set``, and the baseline's where there is one; with ``fid``
    students are scored by FID, and with ``teacher_fid`` the teacher's FID is measured too (a pass of the
    Inception over the eval set, which workers that only judge students skip)."""
    outputs = generate(teacher, eval_set.inputs, device, tile=tile)
    targets, names = eval_set.targets, eval_set.names
    teacher_quality = evaluate(outputs, targets, names=names)
    if fid is not None and teacher_fid:
        with_fid(teacher_quality, fid, outputs)
    baseline = None
    if eval_set.baseline is not None and targets is not None:
        baseline = evaluate(eval_set.inputs, targets, names=names)
    return Reference(eval_set, outputs, teacher_quality, baseline, fid)


def evaluate_on(model: nn.Module, eval_set: EvalSet, reference: Reference | None = None, *,
                device: torch.device | str = "cpu", tile: int | None = None) -> Quality:
    """The one evaluation of a generator on an eval set: whole images, against ground truth, and,
    given the teacher's ``reference``, fidelity and the share of the teacher's gain."""
    outputs = generate(model, eval_set.inputs, device, tile=tile)
    if reference is not None:
        return reference.judge(outputs)
    return evaluate(outputs, eval_set.targets, names=eval_set.names)


def fid_kid(features: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, kid_subset_size: int | None = None
            ) -> tuple[float, float]:
    """FID and KID (mean) between two image batches, with ``features`` as the feature extractor (torchmetrics);
    the standard FID Inception is ``evaluators.fid.inception``."""
    from evaluators.fid import fid_kid_of_features

    return fid_kid_of_features(real, fake, kid_subset_size=kid_subset_size or min(len(real), len(fake)),
                               kid_subsets=10, feature_module=features)
