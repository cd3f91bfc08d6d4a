"""``dmask``: DMAD's differentiable channel masks (Li et al., arXiv 2011.08382) to a MACs target.

A trial trains the space's widest generator with one learnable vector w per channel group
(``spaces.channels``: one shared by the residual trunk, one per resnet group or inception branch),
initialised N(0, 0.2) and applied after each producing layer's norm through a smooth step
``soft_mask(w, b)`` whose bound b is annealed from 1 to 0 in K discrete updates over the first 75%
of the search steps: b = 1 - (i / K)^(1/3) after update i, K = min(--mask-updates, 0.75 steps / 2)
so that updates are at least two steps apart (DMAD: K = 150). The loss is L1 to the target plus
DMAD's co-attention distillation from the task's teacher plus an in-band sparsity penalty
``weight * sum (w + b)`` over -b < w < b (each group's term counted once per layer it masks). The
weight adapts to the distance from the target: ``--mask-weight`` times the relative excess of the
last derived config's MACs over the target (DMAD fixes it per data set and does not always reach
its targets).

At each bound update the derived config (channel alive where w > -b, widths rounded to the space's
choices) has its exact MACs checked; at or under the target the masks are binarised (w > -b kept)
and frozen for the rest of the search. A trial whose masks are not frozen by the last update ends
as a failed row that says the MACs it reached. The frozen keep-set (the same set the MACs check
passed; w > 0 where the bound had reached 0) becomes a config of the space with inherited weights
(``spaces.channels.inherit``), fine-tuned with L1 plus co-attention distillation at four points
(``nas.distill.PointDistiller``; with ``--discriminator`` the target also averages in the
discriminator's attention on the student's output).

The widest network starts from the supernet's weights when one is given (the shipped one for
``--space`` on the embedded default), else from the teacher's when it is the widest network of the
space, else from scratch: the row's ``extra_init`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.checkpoint import load_generator
from nas.data import check_crop, load_task
from nas.distill import PointDistiller
from nas.methods.base import (
    Failed,
    SearchContext,
    SearchThenTrainTrial,
    TargetMethod,
    TrainingTrial,
    check_range,
    inherited_space_note,
    starting_point,
    with_shipped_supernet,
)
from nas.methods.student import PrunedStudentObjective
from nas.training import GeneratorObjective, TrainSettings, Training, adam, optimize
from spaces.channels import ChannelGroup, ChannelMasks, channel_groups, derive_config, inherit
from spaces.errors import UserError
from spaces.space import Config

MASK_INIT_STD = 0.2  # DMAD's initialisation of the mask variables
SEARCH_SHARE = 0.75  # the bound reaches 0 after this share of the search steps


def soft_mask(w: torch.Tensor, bound: float) -> torch.Tensor:
    """DMAD's smooth step: 0 below -b, 0.5 (1 + w/b)^2 on [-b, 0], 1 - 0.5 (1 - w/b)^2 on (0, b], 1 above b;
    a step at w = 0 (0.5 exactly there) when b = 0."""
    if bound <= 0:
        return (w > 0).to(w.dtype) + 0.5 * (w == 0).to(w.dtype)
    r = w / bound
    inner = torch.where(w <= 0, 0.5 * (1 + r) ** 2, 1 - 0.5 * (1 - r) ** 2)
    return torch.where(w < -bound, torch.zeros_like(w), torch.where(w > bound, torch.ones_like(w), inner))


def mask_penalty(w: torch.Tensor, bound: float) -> torch.Tensor:
    """The in-band sparsity term: the sum of (w + b) over -b < w < b (a constant push towards "off")."""
    band = (w > -bound) & (w < bound)
    return ((w + bound) * band).sum()


def mask_updates(steps: int, most: int = 150) -> int:
    """K: the number of bound updates of a search of ``steps`` steps (at least two steps apart)."""
    return max(1, min(most, int(SEARCH_SHARE * steps) // 2))


def bound_at(step: int, steps: int, most: int = 150) -> tuple[float, int]:
    """The bound during ``step`` and how many updates came before it: update i (1..K) takes effect at
    step ceil(i * T / K), T = 0.75 steps, and sets b = 1 - (i / K)^(1/3)."""
    k, horizon = mask_updates(steps, most), max(1, int(SEARCH_SHARE * steps))
    done = min(k, step * k // horizon)
    return 1.0 - (done / k) ** (1 / 3), done


@dataclass(frozen=True)
class DmaskOptions:
    supernet: str | None = field(default=None, metadata={"path": True,
        "help": "supernet whose widest network the masks start from (default: the shipped one for --space; "
                "'none': the teacher's weights where it is the widest network, else fresh ones)"})
    search_steps: int = field(default=200, metadata={"help": "mask-search steps of each trial"})
    finetune_steps: int = field(default=200, metadata={"help": "fine-tune steps of each derived student"})
    batch_size: int = field(default=16, metadata={"help": "training batch"})
    crop: int = field(default=64, metadata={"help": "training crop size (pixels)"})
    lr: float = field(default=4e-4, metadata={"help": "Adam learning rate of the weights (cosine decay to 0)"})
    mask_lr: float = field(default=1e-2, metadata={"help": "Adam learning rate of the mask variables"})
    mask_weight: float = field(default=1e-4, metadata={
        "help": "weight of the sparsity penalty per unit of relative MACs excess over the target"})
    mask_updates: int = field(default=150, metadata={"help": "most bound updates (DMAD: 150)"})
    distill_weight: float = field(default=10.0, metadata={
        "help": "weight of the co-attention distillation (DMAD: 10 pix2pix, 100 CycleGAN)"})
    discriminator: str | None = field(default=None, metadata={"path": True,
        "help": "the teacher's PatchGAN: its attention on the student's output joins the distillation target"})
    gan_weight: float = field(default=0.0, metadata={"help": "weight of the LSGAN loss in the fine-tune (0: none)"})
    ndf: int = field(default=32, metadata={"help": "width of a fresh discriminator (with --gan-weight)"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between a trial's checkpoints"})

    def __post_init__(self) -> None:
        for name in ("lr", "mask_lr"):
            check_range(self, name, 1e-12, 10.0)
        for name in ("mask_weight", "distill_weight", "gan_weight"):
            check_range(self, name, 0.0, None)
        for name in ("search_steps", "finetune_steps", "batch_size", "crop", "mask_updates", "checkpoint_every",
                     "ndf"):
            check_range(self, name, 1, None)

    def settings(self, seed: int, steps: int, gan: bool = False) -> TrainSettings:
        return TrainSettings(steps=steps, batch_size=self.batch_size, crop=self.crop, lr=self.lr, seed=seed,
                             eval_every=steps, checkpoint_every=self.checkpoint_every,
                             gan_weight=self.gan_weight if gan else 0.0, ndf=self.ndf)


class MaskSearchObjective(GeneratorObjective):
    """The widest generator with learnable channel masks, trained towards a MACs target."""

    kind = "student"
    label = "dmask search"

    def __init__(self, method: DmaskMethod, target: float, settings: TrainSettings, device: torch.device) -> None:
        options: DmaskOptions = method.options
        self.space, self.groups, self.settings, self.target = method.space, method.groups, settings, float(target)
        self.config = self.space.max_config()
        self.convention, self.options = method.context.macs_convention, options
        self._identity = {"method": "dmask", "phase": "search", "target": self.target, "init": method.init,
                          "mask_weight": options.mask_weight, "mask_lr": options.mask_lr}
        self.generator = method.widest().to(device).train()
        self.teacher = method.teacher_module.to(device).eval().requires_grad_(False)
        generator = torch.Generator().manual_seed(settings.seed)
        self.w = nn.ParameterDict({_key(name): nn.Parameter(
            (torch.randn(g.size, generator=generator) * MASK_INIT_STD).to(device)) for name, g in self.groups.items()})
        self.masks = ChannelMasks(self.generator, self.groups)
        self.distiller = PointDistiller(self.generator, self.teacher, "attention")
        self.opt_g = adam([{"params": self.generator.parameters()},
                           {"params": self.w.parameters(), "lr_scale": options.mask_lr / options.lr}],
                          settings.lr, False)
        self.frozen: dict[str, torch.Tensor] | None = None
        self.checked, self.frozen_at, self.reached, self.excess = -1, None, None, 0.0

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def w_of(self, name: str) -> torch.Tensor:
        return self.w[_key(name)]

    def derived(self, bound: float) -> tuple[Config, dict[str, torch.Tensor]]:
        """The config of the channels alive at ``bound`` (w > -b; the frozen set once frozen)."""
        keep = self.frozen or {n: (self.w_of(n).detach() > -bound) for n in self.groups}
        return derive_config(self.space, self.groups, {n: int(k.sum()) for n, k in keep.items()}), keep

    def check(self, bound: float) -> None:
        """At a bound update: freeze the masks if the derived config fits the target; adapt the penalty."""
        config, keep = self.derived(bound)
        self.reached = self.space.macs(config, convention=self.convention)
        self.excess = max(0.0, self.reached / self.target - 1.0)
        if self.reached <= self.target:
            self.frozen = {n: k.clone() for n, k in keep.items()}

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> float:
        bound, updates = bound_at(step, self.settings.steps, self.options.mask_updates)
        if self.frozen is None and updates != self.checked:
            self.checked = updates
            self.check(bound)
            if self.frozen is not None:
                self.frozen_at = step
        if self.frozen is not None:
            values = {n: k.to(self.w_of(n).dtype) for n, k in self.frozen.items()}
        else:
            values = {n: soft_mask(self.w_of(n), bound) for n in self.groups}
        self.masks.set(values)
        with torch.no_grad():
            t_out = self.teacher(x)
        out = self.generator(x)
        loss = F.l1_loss(out, y if y is not None else t_out) + self.options.distill_weight * self.distiller.loss(out)
        if self.frozen is None and bound > 0 and self.excess > 0:
            penalty = sum(len(g.mask_points) * mask_penalty(self.w_of(n), bound) for n, g in self.groups.items())
            loss = loss + self.options.mask_weight * self.excess * penalty
        optimize(loss, self.opt_g, None, None, x, out)
        return float(loss.detach())

    def evaluate(self) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        return {**super().state(), "masks": {k: v.detach().cpu() for k, v in self.w.items()},
                "frozen": self.frozen, "frozen_at": self.frozen_at, "checked": self.checked,
                "reached": self.reached, "excess": self.excess}

    def load_state(self, record: dict[str, Any]) -> None:
        super().load_state(record)
        with torch.no_grad():
            for k, v in record["masks"].items():
                self.w[k].copy_(v)
        self.frozen = record["frozen"]
        self.frozen_at, self.checked = record["frozen_at"], record["checked"]
        self.reached, self.excess = record["reached"], record["excess"]

    def close(self) -> None:
        self.masks.remove()
        self.distiller.remove()


def _key(group: str) -> str:
    return group.replace(".", "_")  # ParameterDict keys cannot hold dots


class DmaskTrial(SearchThenTrainTrial):
    """Mask search (``search.pth``), then the derived student's fine-tune."""

    def __init__(self, method: DmaskMethod, target: float) -> None:
        options, device = method.options, torch.device(method.context.device)
        settings = options.settings(method.context.seed, options.search_steps)
        search = Training(MaskSearchObjective(method, target, settings, device), method.task, settings, device,
                          task_spec=method.context.task)
        super().__init__(method, target, search, options.finetune_steps)

    def _last_update_passed(self) -> bool:
        """Whether the step that applied the last bound update (and its MACs check) has run."""
        steps, most = self.search.settings.steps, self.method.options.mask_updates
        return self.search.step > 0 and bound_at(self.search.step - 1, steps, most)[1] == mask_updates(steps, most)

    def failure(self) -> Failed | None:
        if self.objective.frozen is None and self._last_update_passed():
            return Failed(f"dmask: the masks never brought the network under the target "
                          f"{self.target / 1e9:.4g}G MACs (the derived config cost "
                          f"{self.objective.reached / 1e9:.4g}G at the last bound update); raise "
                          f"--mask-weight, --mask-lr or --search-steps, or the budget")
        return None

    def derive(self) -> TrainingTrial:
        method, objective = self.method, self.objective
        options, device = method.options, torch.device(method.context.device)
        config, keep = objective.derived(0.0)
        # kept channels first (their mask variables are above the rest's), the others by w
        scores = {n: objective.w_of(n).detach().cpu() + 1e3 * keep[n].cpu() for n in method.groups}
        objective.masks.remove()
        objective.distiller.remove()
        student = inherit(method.space, objective.generator, scores, config, method.groups)
        settings = options.settings(method.context.seed, options.finetune_steps, gan=True)
        identity = {"method": "dmask", "phase": "finetune", "target": self.target, "init": method.init}
        finetune = PrunedStudentObjective(method.space, config, student, method.teacher_module, settings, device,
                                          distill="attention", distill_weight=options.distill_weight,
                                          identity=identity, discriminator=options.discriminator)
        training = Training(finetune, method.task, settings, device, task_spec=method.context.task)
        extra = {"target": self.target, "init": method.init, "frozen_at": objective.frozen_at,
                 "mask_updates": mask_updates(options.search_steps, options.mask_updates)}
        return TrainingTrial(method, config, training, extra)


class DmaskMethod(TargetMethod):
    """Differentiable channel masks on the widest network of a space, one trial per sampled MACs target."""

    name = "dmask"
    Options = DmaskOptions
    export_keys = ("target", "init", "frozen_at", "steps")

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        self._space, self._supernet_state, self.init = starting_point(self.options.supernet, context)
        if self._space.family not in ("resnet", "inception"):
            raise UserError(f"--method dmask masks resnet and inception spaces; space '{self._space.name}' is of the "
                            f"{self._space.family} family")
        check_crop(load_task(context.task), self.options.crop)
        self.groups: dict[str, ChannelGroup] = channel_groups(self._space)
        if self._supernet_state is None and self._teacher_is_widest():
            self.init = "teacher"

    def notes(self) -> list[str]:
        return inherited_space_note(self._space, self.options.supernet, self.context) if self.init == "supernet" else []

    @classmethod
    def fill_defaults(cls, options: DmaskOptions, task: str, space: str, shipped: dict[str, Any] | None,
                      weights_dir: Path) -> DmaskOptions:
        return with_shipped_supernet(options, space, shipped, weights_dir)

    def _teacher_is_widest(self) -> bool:
        teacher = load_generator(self.context.teacher)
        return teacher.space.spec_text == self._space.spec_text and \
            teacher.space.encode(teacher.config) == self._space.encode(self._space.max_config())

    def widest(self) -> nn.Module:
        """The widest generator of the space with the weights it starts from (see ``init``)."""
        torch.manual_seed(self.context.seed)
        network = self._space.build(self._space.max_config())
        if self.init == "supernet":
            network.load_state_dict(self._supernet_state)
        elif self.init == "teacher":
            network.load_state_dict(self.teacher_module.state_dict())
        return network

    def trial(self, target: float) -> DmaskTrial:
        return DmaskTrial(self, target)
