"""The teacher objective: a generator of one config trained on ground-truth pairs (L1, optionally
with a PatchGAN). The same objective trains any config from scratch (the benchmarks' baseline)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from evaluators.quality import evaluate_on
from nas.data import Task
from nas.discriminator import PatchDiscriminator
from nas.training import GeneratorObjective, TrainSettings, adam, optimize, with_gan
from spaces.errors import UserError
from spaces.space import Config, SearchSpace


class TeacherObjective(GeneratorObjective):
    """L1 to the ground truth (+ gan_weight * LSGAN) for ``space.build(config)``."""

    kind = "teacher"
    label = "teacher"

    def __init__(self, space: SearchSpace, config: Config, task: Task, settings: TrainSettings,
                 device: torch.device, *, space_arg: str, task_spec: str, config_arg: str | None = None) -> None:
        if not task.paired:
            raise UserError(f"task {task_spec} has no targets ({task.kind} layout): a teacher is trained on pairs "
                            "(sr4x or a pix2pix train/ val/ layout); import a CycleGAN teacher with --teacher instead")
        self.space, self.config, self.task, self.device = space, space.validate(config), task, device
        self.space_arg, self.task_spec, self.settings = space_arg, task_spec, settings
        self.config_arg = config_arg or space.encode(self.config)  # as given (max, min or a config string)
        torch.manual_seed(settings.seed)
        self.generator = space.build(self.config).to(device).train()
        self.opt_g = adam(self.generator.parameters(), settings.lr, settings.gan_weight > 0)
        self.disc = self.opt_d = None
        if settings.gan_weight > 0:
            self.disc = PatchDiscriminator(space.spec.out_channels, ndf=settings.ndf).to(device)
            self.opt_d = adam(self.disc.parameters(), settings.lr, True)

    def identity(self) -> dict[str, Any]:
        return {"space": self.space_arg, "config": self.config_arg}

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> float:
        out = self.generator(x)
        loss = with_gan(F.l1_loss(out, y), self.disc, out, self.settings.gan_weight)
        optimize(loss, self.opt_g, self.disc, self.opt_d, y, out)
        return float(loss.detach())

    def evaluate(self) -> dict[str, Any]:
        quality = evaluate_on(self.generator, self.task.eval_set("val"), device=self.device)
        return {"val_psnr": quality.psnr, "val_ssim": quality.ssim}

    def shown(self, metrics: dict[str, Any]) -> dict[str, str]:
        return {"val_psnr": f"{metrics.get('val_psnr') or 0:.2f}"}

    def record_meta(self) -> dict[str, Any]:
        return {"task": self.task_spec}
