"""``kd``: knowledge distillation into a uniformly scaled student (Aguinaldo et al. 2019).

The student is the space's largest config with every width scaled by one factor f: each site takes
its largest choice at most f times its largest choice, or its smallest choice where none is that
small (an agd layer keeps the max config's operator and scales its width; ``skip`` stays). f is the
largest on a grid of 1/32 steps whose exact MACs are at most the trial's target. This scales the
space's largest config rather than the teacher's own architecture, as the paper does, so that the
student is a candidate of the searched space.

The loss is ``alpha * MSE(S(x), T(x)) + (1 - alpha) * LSGAN``, with alpha on the distillation term
(unofficial reimplementations disagree on this): alpha = 1, the default, is pure MSE to the frozen
teacher's output. The student trains from scratch; no hyperparameter is sampled besides the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from nas.checkpoint import load_generator
from nas.data import check_crop, load_task
from nas.discriminator import discriminator_from
from nas.methods.base import SearchContext, TargetMethod, TrainingTrial, check_range, resolve_space
from nas.training import GeneratorObjective, TrainSettings, Training, adam, optimize, with_gan
from spaces.errors import UserError
from spaces.plan import agd_token, parse_agd_token
from spaces.space import Config, SearchSpace

GRID = 32  # the factor's grid: multiples of 1/32


def scaled_config(space: SearchSpace, factor: float) -> Config:
    """The space's largest config with every width scaled by ``factor`` (see the module's docstring)."""
    largest = space.max_config()
    config: Config = {}
    for site in space.sites:
        top = largest[site.name]
        if isinstance(top, str):  # an agd layer: keep the operator, scale the width
            op, width = parse_agd_token(top)
            if op == "skip":
                config[site.name] = top
                continue
            widths = sorted(w for o, w in map(parse_agd_token, site.choices) if o == op)
            fits = [w for w in widths if w <= factor * width + 1e-9]
            config[site.name] = agd_token(op, fits[-1] if fits else widths[0])
        else:
            fits = [c for c in site.choices if c <= factor * top + 1e-9]
            config[site.name] = max(fits) if fits else min(site.choices)
    return config


def kd_student(space: SearchSpace, target: float, convention: str = "torchprofile") -> tuple[float, Config]:
    """The largest factor on the grid whose scaled config costs at most ``target`` MACs, and that config."""
    for k in range(GRID, 0, -1):
        config = scaled_config(space, k / GRID)
        if space.macs(config, convention=convention) <= target:
            return k / GRID, config
    smallest = space.macs(scaled_config(space, 1 / GRID), convention=convention)
    raise UserError(f"kd: no uniformly scaled config of space '{space.name}' fits the target "
                    f"{target / 1e9:.4g}G MACs (the smallest, at factor 1/{GRID}, costs {smallest / 1e9:.4g}G); "
                    "raise the budget")


@dataclass(frozen=True)
class KdOptions:
    alpha: float = field(default=1.0, metadata={
        "help": "weight of the MSE to the teacher's output; 1 - alpha weighs the LSGAN loss (1: pure MSE)"})
    steps: int = field(default=300, metadata={"help": "training steps of each student"})
    batch_size: int = field(default=16, metadata={"help": "training batch"})
    crop: int = field(default=64, metadata={"help": "training crop size (pixels)"})
    lr: float = field(default=4e-4, metadata={"help": "Adam learning rate (cosine decay to 0)"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between a trial's checkpoints"})
    discriminator: str | None = field(default=None, metadata={"path": True,
        "help": "PatchGAN to start from when alpha < 1 (default: the teacher checkpoint's, else a fresh one)"})
    ndf: int = field(default=32, metadata={"help": "width of a fresh discriminator"})

    def __post_init__(self) -> None:
        check_range(self, "alpha", 0.0, 1.0)
        check_range(self, "lr", 1e-12, 10.0)
        for name in ("steps", "batch_size", "crop", "checkpoint_every", "ndf"):
            check_range(self, name, 1, None)

    def settings(self, seed: int) -> TrainSettings:
        return TrainSettings(steps=self.steps, batch_size=self.batch_size, crop=self.crop, lr=self.lr, seed=seed,
                             eval_every=self.steps, checkpoint_every=self.checkpoint_every,
                             gan_weight=1.0 - self.alpha, ndf=self.ndf)


class KdObjective(GeneratorObjective):
    """alpha * MSE(student(x), teacher(x)) + (1 - alpha) * LSGAN(student(x)); the teacher is frozen."""

    kind = "student"
    label = "kd"

    def __init__(self, space: SearchSpace, config: Config, teacher: torch.nn.Module, settings: TrainSettings,
                 device: torch.device, *, alpha: float, teacher_path: str, discriminator: str | None,
                 space_arg: str) -> None:
        self.space, self.config, self.settings, self.alpha = space, space.validate(config), settings, alpha
        self._identity = {"method": "kd", "space": space_arg, "config": space.encode(self.config),
                          "teacher": teacher_path, "alpha": alpha}
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        torch.manual_seed(settings.seed)
        self.generator = space.build(self.config).to(device).train()
        self.opt_g = adam(self.generator.parameters(), settings.lr, alpha < 1)
        self.disc = self.opt_d = None
        if alpha < 1:
            self.disc = discriminator_from(discriminator or teacher_path, space.spec.out_channels,
                                           ndf=settings.ndf).to(device)
            self.opt_d = adam(self.disc.parameters(), settings.lr, True)

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> float:
        with torch.no_grad():
            t_out = self.teacher(x)
        out = self.generator(x)
        loss = with_gan(self.alpha * F.mse_loss(out, t_out), self.disc, out, 1.0 - self.alpha)
        optimize(loss, self.opt_g, self.disc, self.opt_d, y if y is not None else t_out, out)
        return float(loss.detach())

    def evaluate(self) -> dict[str, Any]:
        return {}  # a trial judges its student once, at the end, against the teacher's reference

    @property
    def student(self) -> torch.nn.Module:
        return self.generator

    def record_meta(self) -> dict[str, Any]:
        return {"method": "kd"}


def kd_trial(method: KdMethod, target: float) -> TrainingTrial:
    """Trains one uniformly scaled student for ``target`` MACs."""
    factor, config = kd_student(method.space, float(target), method.context.macs_convention)
    options: KdOptions = method.options
    objective = KdObjective(method.space, config, method.teacher_module, options.settings(method.context.seed),
                            torch.device(method.context.device), alpha=options.alpha,
                            teacher_path=method.context.teacher, discriminator=options.discriminator,
                            space_arg=method.context.space)
    training = Training(objective, method.task, objective.settings, torch.device(method.context.device),
                        task_spec=method.context.task)
    return TrainingTrial(method, config, training, {"factor": factor, "target": float(target)})


class KdMethod(TargetMethod):
    """Uniformly scaled students distilled from the teacher (MSE), one per sampled MACs target."""

    name = "kd"
    Options = KdOptions
    export_keys = ("factor", "steps")

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        self._space = resolve_space(context.space, context.task)
        check_crop(load_task(context.task), self.options.crop)  # here, not in every trial
        teacher = load_generator(context.teacher)
        if (teacher.space.spec.in_channels, teacher.space.spec.out_channels) != \
                (self._space.spec.in_channels, self._space.spec.out_channels):
            raise UserError(f"teacher {context.teacher} maps {teacher.space.spec.in_channels} to "
                            f"{teacher.space.spec.out_channels} channels but space {self._space.name} maps "
                            f"{self._space.spec.in_channels} to {self._space.spec.out_channels}")

    def trial(self, target: float) -> TrainingTrial:
        return kd_trial(self, target)
