"""The training of a derived student, shared by ``prune`` (CAT), ``dmask`` (DMAD) and ``agd``: L1 to the
target (ground truth, or the teacher's output on unpaired data or with ``to_teacher``, as AGD) plus,
where asked, a feature distillation at four points (``nas.distill.PointDistiller``: kernel alignment or
co-attention), plus LSGAN when a GAN weight is set."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.discriminator import discriminator_from
from nas.distill import PointDistiller
from nas.training import GeneratorObjective, TrainSettings, adam, optimize, with_gan
from spaces.space import Config, SearchSpace


class PrunedStudentObjective(GeneratorObjective):
    kind = "student"

    def __init__(self, space: SearchSpace, config: Config, student: nn.Module, teacher: nn.Module,
                 settings: TrainSettings, device: torch.device, *, distill: str | None, distill_weight: float,
                 identity: dict[str, Any], discriminator: str | None = None, to_teacher: bool = False) -> None:
        self.space, self.config, self.settings = space, space.validate(config), settings
        self.label = identity.get("method", "student")
        self._identity = {**identity, "config": space.encode(self.config), "distill_weight": distill_weight}
        self.generator = student.to(device).train()
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.distill_weight, self.to_teacher = distill_weight, to_teacher
        self.opt_g = adam(self.generator.parameters(), settings.lr, settings.gan_weight > 0)
        self.disc = self.opt_d = None
        if settings.gan_weight > 0 or discriminator:
            self.disc = discriminator_from(discriminator, space.spec.out_channels, ndf=settings.ndf).to(device)
            self.opt_d = adam(self.disc.parameters(), settings.lr, True)
        self.distiller = None if distill is None else PointDistiller(
            self.generator, self.teacher, distill, discriminator=self.disc if discriminator else None)

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> float:
        with torch.no_grad():
            t_out = self.teacher(x)
        out = self.generator(x)
        target = t_out if self.to_teacher or y is None else y
        loss = F.l1_loss(out, target)
        if self.distiller is not None:
            loss = loss + self.distill_weight * self.distiller.loss(out)
        gan = self.disc if self.settings.gan_weight > 0 else None
        loss = with_gan(loss, gan, out, self.settings.gan_weight)
        optimize(loss, self.opt_g, gan, self.opt_d, target, out)
        return float(loss.detach())

    def evaluate(self) -> dict[str, Any]:
        return {}  # a trial judges its student once, at the end, against the task teacher's reference

    @property
    def student(self) -> nn.Module:
        return self.generator

    def close(self) -> None:
        if self.distiller is not None:
            self.distiller.remove()
