"""Intermediate-feature distillation (GAN Compression): student features, mapped by learned 1x1 convs,
regress the teacher's features at the same relative depth. Features are read at a generator's
``taps()``: a ResNet-layout generator's trunk blocks, a U-Net's inner down levels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas.distributed import gather_batch, global_mean
from spaces.errors import UserError
from spaces.supernet import ElasticConv2d

# Weight of the (relative) feature distillation against the L1 reconstruction: the default of
# supernet training and of the fine-tune of an exported subnet alike.
DISTILL_WEIGHT = 0.3


def layer_positions(depth: int, count: int) -> list[int]:
    """``count`` block indices spread evenly over a trunk of ``depth`` blocks, ending at the last."""
    count = max(1, min(count, depth))
    return sorted({round((i + 1) * depth / count) - 1 for i in range(count)})


class FeatureCapture:
    """Keeps the outputs of some modules during a forward pass (forward hooks)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.outputs: list[torch.Tensor | None] = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, index: int):
        def hook(module, inputs, output):
            self.outputs[index] = output
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class FeatureDistiller(nn.Module):
    """1x1 mappers from student to teacher features; their MSE is the distillation loss.

    Mappers take any number of input channels up to the widest student (first-k slicing), so one
    set of mappers serves every subnet of a supernet. Where a pair's resolutions differ (a U-Net
    student of a ResNet teacher), the finer of the two is average-pooled to the coarser.
    """

    def __init__(self, student_trunk: list[nn.Module], teacher_trunk: list[nn.Module], *, layers: int,
                 student_width: int, teacher_widths: list[int]) -> None:
        super().__init__()
        if not 1 <= layers <= len(teacher_trunk):  # (a student with fewer points distils at all of its own)
            raise UserError(f"--distill-layers {layers}: the teacher has {len(teacher_trunk)} points to distil from; "
                            f"give 1 to {len(teacher_trunk)}")
        self.student_positions = layer_positions(len(student_trunk), layers)
        self.teacher_positions = layer_positions(len(teacher_trunk), layers)
        if len(self.student_positions) != len(self.teacher_positions):
            n = min(len(self.student_positions), len(self.teacher_positions))
            self.student_positions = layer_positions(len(student_trunk), n)
            self.teacher_positions = layer_positions(len(teacher_trunk), n)
        self.mappers = nn.ModuleList(
            ElasticConv2d(student_width, teacher_widths[p], 1) for p in self.teacher_positions)
        self._student = FeatureCapture([student_trunk[i] for i in self.student_positions])
        self._teacher = FeatureCapture([teacher_trunk[i] for i in self.teacher_positions])

    def loss(self) -> torch.Tensor:
        """MSE of the features captured in the last student and teacher forward passes, relative to
        the teacher features' mean square.

        Relative, so that a distillation weight means the same for every teacher: the trunk
        features of the norm-free sr4x teacher have a mean square near 0.03, an instance-norm
        teacher's near 2, and a plain MSE left the former with almost no distillation at all.
        """
        terms = []
        for mapper, s, t in zip(self.mappers, self._student.outputs, self._teacher.outputs):
            s, t = _same_size(mapper(s), t.detach())
            # the mean square of the global batch's teacher features (one rank holds a slice of it), so
            # that data-parallel gradients equal the full batch's
            terms.append(F.mse_loss(s, t) / global_mean(t.pow(2).mean()).clamp_min(1e-8))
        return torch.stack(terms).mean()

    def detach_hooks(self) -> None:
        self._student.remove()
        self._teacher.remove()


def _same_size(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if s.shape[-2:] == t.shape[-2:]:
        return s, t
    size = min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1])
    return F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)


def _tap_widths(module: nn.Module, device: torch.device) -> list[int]:
    """Output channels of every tap, read off one tiny forward pass."""
    capture = FeatureCapture(module.taps())
    side = max(32, module.multiple)
    was_training = module.training
    with torch.no_grad():
        module.eval()(torch.zeros(1, module.in_channels, side, side, device=device))
    module.train(was_training)
    capture.remove()
    return [o.shape[1] for o in capture.outputs]


def make_distiller(student: nn.Module, teacher: nn.Module, *, layers: int, device: torch.device) -> FeatureDistiller:
    """Feature distillation from ``teacher``'s taps into ``student``'s (a supernet's or a subnet's)."""
    return FeatureDistiller(student.taps(), teacher.taps(), layers=layers,
                            student_width=max(_tap_widths(student, device)),
                            teacher_widths=_tap_widths(teacher, device)).to(device)


def distill_loss(out: torch.Tensor, target: torch.Tensor, distiller: FeatureDistiller, weight: float) -> torch.Tensor:
    """Reconstruction of the target (ground truth, or the teacher's output for unpaired data) plus
    the feature distillation of the same forward pass."""
    return F.l1_loss(out, target) + weight * distiller.loss()


def kernel_alignment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CAT's (global) kernel alignment of two feature batches: <X X^T, Y Y^T>_F / (|X X^T|_F |Y Y^T|_F)
    with X, Y the features flattened to batch x D (uncentred batch Gram matrices, so the two may have
    any widths and no adaptor is needed). Invariant to rotations and scaling of either side, not to
    shifts; 1 for a batch of one, which is therefore refused."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"kernel alignment of batches of {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError("kernel alignment needs a batch of at least 2 (it is 1 for any single sample)")
    gx, gy = (t.flatten(1) @ t.flatten(1).T for t in (x, y))
    return (gx * gy).sum() / (gx.norm() * gy.norm()).clamp_min(1e-12)


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """DMAD's attention map: the mean over channels of the squared features, flattened and L2-normalised
    per sample (batch x H*W)."""
    return F.normalize(features.pow(2).mean(1).flatten(1), dim=1)


def feature_points(generator: nn.Module) -> list[nn.Module]:
    """Where CAT and DMAD distil: after the down-sampling and after the trunk blocks at one, two and
    three thirds of its depth."""
    return [generator.down2, *(generator.trunk[i] for i in layer_positions(len(generator.trunk), 3))]


class PointDistiller:
    """Captures a student's and a teacher's features at ``feature_points`` and compares them:
    ``gka`` (CAT: minus the sum of kernel alignments) or ``attention`` (DMAD: the sum of the MSEs of
    attention maps, the target optionally averaged with the discriminator's attention on the student's
    output)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, kind: str,
                 discriminator: nn.Module | None = None) -> None:
        if kind not in ("gka", "attention"):
            raise ValueError(f"unknown feature distillation {kind!r}")
        self.kind = kind
        self._student = FeatureCapture(feature_points(student))
        self._teacher = FeatureCapture(feature_points(teacher))
        self.discriminator = discriminator
        self._disc = None
        if discriminator is not None:  # its activations after each of the first four convs
            acts = [m for m in discriminator.model if isinstance(m, nn.LeakyReLU)][:4]
            self._disc = FeatureCapture(acts)

    def loss(self, student_out: torch.Tensor | None = None) -> torch.Tensor:
        """The distillation term of the last student and teacher forward passes (``student_out``: the
        student's output, for the discriminator's attention)."""
        pairs = list(zip(self._student.outputs, self._teacher.outputs))
        if self.kind == "gka":
            # the alignment of the global batch's Gram matrices: data-parallel ranks gather each other's slices
            return -torch.stack([kernel_alignment(gather_batch(s), gather_batch(t.detach())) for s, t in pairs]).sum()
        targets = [attention_map(t.detach()) for _, t in pairs]
        if self._disc is not None and student_out is not None:
            with torch.no_grad():
                self.discriminator(student_out.detach())
            # the discriminator's maps, resized to the generator's, join the target
            resized = [F.interpolate(d.pow(2).mean(1, keepdim=True), size=t.shape[-2:], mode="bilinear",
                                     align_corners=False) for d, (_, t) in zip(self._disc.outputs, pairs)]
            targets = [0.5 * a + 0.5 * F.normalize(r.flatten(1), dim=1) for a, r in zip(targets, resized)]
        return torch.stack([F.mse_loss(attention_map(s), t) for (s, _), t in zip(pairs, targets)]).sum()

    def remove(self) -> None:
        for capture in (self._student, self._teacher, self._disc):
            if capture is not None:
                capture.remove()
