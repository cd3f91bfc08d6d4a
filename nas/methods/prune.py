"""``prune``: CAT's one-step pruning (Jin et al., CVPR 2021) of an inception-space network to a MACs
target, then distillation with Global Kernel Alignment.

Channel importance is |gamma| of the first affine norm after each prunable conv (CAT), or, in a
network without affine norms (the norm-free sr4x spaces), the L1 norm of the conv's output filter;
``importance`` says which. A residual trunk's importance is the last down-sampling conv's (CAT: the
trunk's width is down2's); a resnet group's hidden channels, shared by several blocks, take the mean
over them. One global threshold is found by bisection over the importances so that the rounded
config's exact MACs are at or just under the target (``prune_config``); the sampling layers keep at
least their site's smallest choice. The pruned network inherits the kept weights through
``spaces.channels.inherit`` (``--reinit``: CAT as released, architecture only) and is fine-tuned with
L1 to the target minus ``distill_weight`` times the kernel alignment with the source network at four
points (``nas.distill.PointDistiller``). Quality is judged against the task's teacher, as for every
method.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.checkpoint import load_generator
from nas.data import check_crop, load_task
from nas.methods.base import SearchContext, TargetMethod, TrainingTrial, check_range, inherited_space_note
from nas.methods.student import PrunedStudentObjective
from nas.training import TrainSettings, Training
from spaces.channels import ChannelGroup, channel_groups, derive_config, inherit
from spaces.errors import UserError
from spaces.space import Config, SearchSpace

SOURCE_KEY = "teacher_inception"  # the manifest entry of the shipped source network


CRITERIA = ("auto", "gamma", "l1", "activation")


def importance(network: nn.Module, groups: dict[str, ChannelGroup], criterion: str = "auto",
               calibration: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Per-channel importance of every group of ``network`` (a generator of the widest plan), and the
    criterion used: ``gamma`` (|gamma| of the first affine norm after each prunable conv, CAT),
    ``l1`` (the L1 norm of the conv's output filter) or ``activation`` (the channel's mean output after
    its ReLU on ``calibration`` images: what |gamma| measures in a normalised network, a channel's
    output scale). ``auto`` is ``gamma`` where every prunable conv has an affine norm, else
    ``activation``."""
    modules = dict(network.named_modules())
    layers = [layer for group in groups.values() for layer in group.primaries]
    if criterion == "auto":
        criterion = "gamma" if all(norm is not None for _, norm, _ in layers) else "activation"
    if criterion == "gamma" and not all(norm is not None for _, norm, _ in layers):
        raise UserError("--importance gamma needs an affine norm after every prunable conv; this network has none "
                        "there (use l1 or activation)")
    means: dict[str, torch.Tensor] = {}
    if criterion == "activation":
        if calibration is None:
            raise ValueError("the activation criterion needs calibration images")
        handles = [modules[point].register_forward_hook(
            lambda m, args, out, point=point: means.__setitem__(point, out.detach().relu().mean((0, 2, 3)).cpu()))
            for _, _, point in layers]
        try:
            with torch.no_grad():
                network(calibration.to(next(network.parameters()).device))
        finally:
            for handle in handles:
                handle.remove()
    scores = {}
    for name, group in groups.items():
        per_layer = []
        for conv, norm, point in group.primaries:
            if criterion == "gamma":
                per_layer.append(modules[norm].weight.detach().abs().float().cpu())
            elif criterion == "activation":
                per_layer.append(means[point].float())
            else:
                weight = modules[conv].weight.detach().abs().float().cpu()
                out_dim = 1 if isinstance(modules[conv], nn.ConvTranspose2d) else 0
                per_layer.append(weight.transpose(0, out_dim).flatten(1).sum(1))
        scores[name] = torch.stack(per_layer).mean(0)
    return scores, criterion


@dataclass(frozen=True)
class Pruned:
    """The result of the bisection: the config, its exact MACs, the threshold, and the MACs of the
    config that the next lower threshold would give (None where every channel is kept)."""

    config: Config
    macs: int
    threshold: float
    next_macs: int | None


def prune_config(space: SearchSpace, groups: dict[str, ChannelGroup], scores: dict[str, torch.Tensor],
                 target: float, convention: str = "torchprofile") -> Pruned:
    """The config kept by the one global threshold at which the rounded config's exact MACs are at or
    under ``target`` with as many channels as possible (bisection over the distinct importances)."""
    values = torch.unique(torch.cat([s.flatten() for s in scores.values()]))  # ascending

    def config_at(i: int) -> Config:
        return derive_config(space, groups, {n: int((s >= values[i]).sum()) for n, s in scores.items()})

    def macs(i: int) -> int:
        return space.macs(config_at(i), convention=convention)

    last = len(values) - 1
    if macs(last) > target:
        raise UserError(f"prune: keeping only the most important channel of every layer still costs "
                        f"{macs(last) / 1e9:.4g}G MACs in space '{space.name}', over the target "
                        f"{target / 1e9:.4g}G; raise the budget")
    lo, hi = 0, last  # macs(hi) <= target; find the smallest such index
    if macs(0) <= target:
        hi = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if macs(mid) <= target else (mid, hi)
    return Pruned(config_at(hi), macs(hi), float(values[hi]), macs(hi - 1) if hi > 0 else None)


@dataclass(frozen=True)
class PruneOptions:
    source: str | None = field(default=None, metadata={"path": True,
        "help": "network to prune: a generator of the space's max config (default: the shipped sr4x inception "
                "teacher)"})
    steps: int = field(default=300, metadata={"help": "fine-tune steps of each pruned student"})
    batch_size: int = field(default=16, metadata={"help": "training batch (at least 2: kernel alignment needs it)"})
    crop: int = field(default=64, metadata={"help": "training crop size (pixels)"})
    lr: float = field(default=4e-4, metadata={"help": "Adam learning rate (cosine decay to 0)"})
    distill_weight: float = field(default=0.01, metadata={
        "help": "weight of the kernel alignment with the source network, against L1's 1 (CAT: 0.5 to 1.3 against "
                "a reconstruction weight of 100)"})
    importance: str = field(default="auto", metadata={
        "help": "channel importance: gamma (|gamma| of affine norms, CAT), l1 (output filters' L1 norms), activation "
                "(mean output after the ReLU on a training batch) or auto (gamma where the network has affine norms, "
                "else activation)"})
    reinit: bool = field(default=False, metadata={
        "help": "train the pruned architecture from fresh weights (CAT as released) instead of the kept ones"})
    gan_weight: float = field(default=0.0, metadata={"help": "weight of the LSGAN loss (0: none)"})
    discriminator: str | None = field(default=None, metadata={"path": True,
        "help": "PatchGAN to start from when --gan-weight > 0 (default: a fresh one)"})
    ndf: int = field(default=32, metadata={"help": "width of a fresh discriminator"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between a trial's checkpoints"})

    def __post_init__(self) -> None:
        if self.importance not in CRITERIA:
            raise UserError(f"--importance must be one of {', '.join(CRITERIA)}, got {self.importance!r}")
        check_range(self, "batch_size", 2, None)
        check_range(self, "lr", 1e-12, 10.0)
        check_range(self, "distill_weight", 0.0, None)
        check_range(self, "gan_weight", 0.0, None)
        for name in ("steps", "crop", "checkpoint_every", "ndf"):
            check_range(self, name, 1, None)

    def settings(self, seed: int) -> TrainSettings:
        return TrainSettings(steps=self.steps, batch_size=self.batch_size, crop=self.crop, lr=self.lr, seed=seed,
                             eval_every=self.steps, checkpoint_every=self.checkpoint_every,
                             gan_weight=self.gan_weight, ndf=self.ndf)


class PruneMethod(TargetMethod):
    """One-step pruning of a source network to each sampled MACs target, then GKA distillation."""

    name = "prune"
    Options = PruneOptions
    export_keys = ("target", "threshold", "importance", "steps")

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        if not self.options.source:
            raise UserError("--method prune needs a network to prune (--source CKPT: a generator of a space's max "
                            "config, e.g. from `nas.train teacher --space spaces/sr4x/inception.yaml --config max`)")
        source = load_generator(self.options.source)
        self._space, self.source = source.space, source
        if self._space.family not in ("resnet", "inception"):
            raise UserError(f"--method prune prunes resnet and inception networks; {self.options.source} is of the "
                            f"{self._space.family} family")
        if self._space.encode(source.config) != self._space.encode(self._space.max_config()):
            raise UserError(f"--source {self.options.source} is config {self._space.encode(source.config)} of space "
                            f"'{self._space.name}'; prune needs a network of the space's max config "
                            f"({self._space.encode(self._space.max_config())})")
        task, options = load_task(context.task), self.options
        check_crop(task, options.crop)
        # one training batch: the activation criterion is measured on it
        self.calibration, _ = task.batch(seed=context.seed, step=0, batch_size=options.batch_size, crop=options.crop)
        self.groups = channel_groups(self._space)
        self.scores, self.criterion = importance(source.module, self.groups, options.importance, self.calibration)

    def notes(self) -> list[str]:
        return inherited_space_note(self._space, self.options.source, self.context)

    @classmethod
    def fill_defaults(cls, options: PruneOptions, task: str, space: str, shipped: dict[str, Any] | None,
                      weights_dir: Path) -> PruneOptions:
        if options.source:
            return options
        if shipped is None or SOURCE_KEY not in shipped:
            raise UserError(f"--source is required for --task {task} (a network of the space's max config to prune)")
        if space != "inception":
            raise UserError(f"the shipped network to prune is the max config of spaces/{task}/inception.yaml, not of "
                            f"{space!r}; use --space inception or give --source")
        return replace(options, source=str(weights_dir / shipped[SOURCE_KEY]["file"]))

    def prune(self, target: float) -> Pruned:
        return prune_config(self._space, self.groups, self.scores, target, self.context.macs_convention)

    def trial(self, target: float) -> TrainingTrial:
        options, device = self.options, torch.device(self.context.device)
        pruned = self.prune(target)
        settings = options.settings(self.context.seed)
        torch.manual_seed(settings.seed)
        if options.reinit:
            student = self._space.build(pruned.config)
        else:
            student = inherit(self._space, self.source.module, self.scores, pruned.config, self.groups)
        identity = {"method": "prune", "source": options.source, "reinit": options.reinit, "target": target}
        objective = PrunedStudentObjective(self._space, pruned.config, student, self.source.module, settings, device,
                                           distill="gka", distill_weight=options.distill_weight, identity=identity,
                                           discriminator=options.discriminator)
        training = Training(objective, self.task, settings, device, task_spec=self.context.task)
        return TrainingTrial(self, pruned.config, training,
                             {"target": target, "threshold": pruned.threshold, "importance": self.criterion,
                              "reinit": options.reinit})
