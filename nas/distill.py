"""Intermediate-feature distillation (GAN Compression): student trunk features, mapped by learned
1x1 convs, regress the teacher's features at the same relative depth."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
    """1x1 mappers from student to teacher trunk features; their MSE is the distillation loss.

    Mappers take any number of input channels up to the widest student (first-k slicing), so one
    set of mappers serves every subnet of a supernet.
    """

    def __init__(self, student_trunk: nn.Sequential, teacher_trunk: nn.Sequential, *, layers: int,
                 student_width: int, teacher_widths: list[int]) -> None:
        super().__init__()
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
        terms = [F.mse_loss(mapper(s), t.detach()) / t.detach().pow(2).mean().clamp_min(1e-8)
                 for mapper, s, t in zip(self.mappers, self._student.outputs, self._teacher.outputs)]
        return torch.stack(terms).mean()

    def detach_hooks(self) -> None:
        self._student.remove()
        self._teacher.remove()


def _trunk_widths(module: nn.Module, in_channels: int, device: torch.device) -> list[int]:
    """Output channels of every trunk block, read off one tiny forward pass."""
    capture = FeatureCapture(list(module.trunk))
    with torch.no_grad():
        module(torch.zeros(1, in_channels, 32, 32, device=device))
    capture.remove()
    return [o.shape[1] for o in capture.outputs]


def make_distiller(student: nn.Module, teacher: nn.Module, *, layers: int, device: torch.device) -> FeatureDistiller:
    """Feature distillation from ``teacher``'s trunk into ``student``'s (a supernet's or a subnet's)."""
    channels = student.stem[1].in_channels
    return FeatureDistiller(student.trunk, teacher.trunk, layers=layers,
                            student_width=max(_trunk_widths(student, channels, device)),
                            teacher_widths=_trunk_widths(teacher, channels, device)).to(device)


def distill_loss(out: torch.Tensor, target: torch.Tensor, distiller: FeatureDistiller, weight: float) -> torch.Tensor:
    """Reconstruction of the target (ground truth, or the teacher's output for unpaired data) plus
    the feature distillation of the same forward pass."""
    return F.l1_loss(out, target) + weight * distiller.loss()
