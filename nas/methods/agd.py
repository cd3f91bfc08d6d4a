"""``agd``: AutoGAN-Distiller's differentiable search (Fu et al., ICML 2020) to a MACs target.

A trial searches an agd space on its supernet (the shipped once-for-all one for ``--space agd`` on
the embedded default). Each layer's token factors into an operator and a width; per layer the
operators are mixed by softmax(alpha), all computed (DARTS-style), and the width is a straight-through
Gumbel sample of its logits (forward: the sampled width; backward: a gradient to every logit),
temperature 1; the sampling layers' widths (stem, down1, trunk, up1, up2) are sampled the same way.
A width is applied as a mask on the supernet's full-width channels (first k kept), so one-hot choices
run exactly the derived network with the supernet's weights.

The training images are split by image into two halves (a stereo pair stays together; val and test
are never used); each search step is an architecture step on one half (Adam 3e-4, betas (0.5, 0.999))
then a weight step on the other (first-order). The loss is L1 to the teacher's output (AGD adds VGG
losses, whose weights cannot be downloaded here) plus ``lambda * relaxed MACs / target``, the relaxed
MACs being the exact expectation of the analytic MACs under the choice probabilities
(``spaces.relaxed``). lambda doubles after an architecture step whose argmax network is over the
target and halves when it is under (1 - d) * target, within ``LAMBDA_RANGE``. If the argmax network is still over at the end,
widths are shrunk greedily (the move saving most MACs per unit of L1 lost on a fixed batch) until it
fits, and the row says it was projected. The derived network is then trained with L1 to the teacher's
output, starting from its supernet slice (``--reinit``: from scratch, as AGD did).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.checkpoint import load_weights
from nas.data import Split, Task, check_crop, load_task
from nas.distributed import local_slice
from nas.methods.base import (SearchContext, SearchThenTrainTrial, TargetMethod, TrainingTrial, check_range,
                              inherited_space_note, starting_point, with_shipped_supernet)
from nas.methods.student import PrunedStudentObjective
from nas.training import Objective, TrainSettings, Training
from spaces.errors import UserError
from spaces.modules import ElementwiseInstanceNorm
from spaces.relaxed import SAMPLING_SITES, AgdFactors, RelaxedMacs
from spaces.space import Config
from spaces.supernet import MixedCell, Supernet

ARCH_BETAS = (0.5, 0.999)  # AGD's architecture optimizer
NORMS = (nn.BatchNorm2d, nn.InstanceNorm2d, ElementwiseInstanceNorm)


def straight_through(logits: torch.Tensor, generator: torch.Generator, tau: float = 1.0) -> torch.Tensor:
    """A hard Gumbel-softmax sample over the last dimension: one-hot forward, the soft sample's gradient
    backward; the noise comes from ``generator`` (CPU), so a step's sample is a function of its seed."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    gumbel = (-torch.log(-torch.log(u))).to(logits.device, logits.dtype)
    soft = F.softmax((logits + gumbel) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def split_by_image(split: Split, seed: int) -> tuple[list[int], list[int]]:
    """Two halves of a split's images (indices), whole images only; names that differ only by a
    ``_left``/``_right`` suffix (a stereo pair) stay in one half."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(split.names):
        key = name.removesuffix("_left").removesuffix("_right")
        groups.setdefault(key, []).append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    halves: tuple[list[int], list[int]] = ([], [])
    for key in keys:  # the next group to the smaller half
        smaller = halves[0] if len(halves[0]) <= len(halves[1]) else halves[1]
        smaller.extend(groups[key])
    if not halves[0] or not halves[1]:
        raise UserError(f"--method agd splits the training images in two halves by image, but the task has only "
                        f"{len(keys)} image group(s); give at least two training images")
    return sorted(halves[0]), sorted(halves[1])


def sub_task(task: Task, indices: list[int]) -> Task:
    """``task`` whose training split holds only the images at ``indices``."""
    train = task.train
    return replace(task, train=Split([train.inputs[i] for i in indices],
                                     [train.targets[i] for i in indices] if train.targets is not None else None,
                                     [train.names[i] for i in indices]))


@dataclass
class Choice:
    """Weights of every choice for one forward: per sampling site a vector over its widths, per layer
    a vector over operators and one over widths (one-hot, soft, or straight-through samples)."""

    sites: dict[str, torch.Tensor]
    ops: torch.Tensor
    widths: torch.Tensor


class Architecture(nn.Module):
    """AGD's architecture parameters: operator and width logits per layer, width logits per sampling site."""

    def __init__(self, factors: AgdFactors) -> None:
        super().__init__()
        self.factors = factors
        self.ops = nn.Parameter(torch.zeros(factors.layers, len(factors.ops)))
        self.widths = nn.Parameter(torch.zeros(factors.layers, len(factors.widths)))
        self.sites = nn.ParameterDict({name: nn.Parameter(torch.zeros(len(factors.sites[name])))
                                       for name in SAMPLING_SITES})

    def probabilities(self) -> Choice:
        return Choice({name: F.softmax(p, -1) for name, p in self.sites.items()}, F.softmax(self.ops, -1),
                      F.softmax(self.widths, -1))

    def sample(self, generator: torch.Generator, tau: float = 1.0) -> Choice:
        """Soft operators; straight-through samples of every width."""
        return Choice({name: straight_through(p, generator, tau) for name, p in self.sites.items()},
                      F.softmax(self.ops, -1), straight_through(self.widths, generator, tau))

    def argmax(self) -> Config:
        return self.factors.config({name: int(p.argmax()) for name, p in self.sites.items()},
                                   self.ops.argmax(-1).tolist(), self.widths.argmax(-1).tolist())


def one_hot(factors: AgdFactors, config: Config, device: torch.device | str = "cpu") -> Choice:
    """The choice that runs exactly ``config``."""
    sites, ops, widths = factors.indices(config)
    return Choice({name: F.one_hot(torch.tensor(sites[name]), len(factors.sites[name])).double().to(device)
                   for name in SAMPLING_SITES},
                  F.one_hot(torch.tensor(ops), len(factors.ops)).double().to(device),
                  F.one_hot(torch.tensor(widths), len(factors.widths)).double().to(device))


class SearchNetwork(nn.Module):
    """An agd supernet run with weighted choices: every operator of a layer computed at full width and
    mixed by its weight, every width a mask over the first channels (hooks after each conv and norm)."""

    def __init__(self, supernet: Supernet) -> None:
        super().__init__()
        self.supernet = supernet
        self.factors = f = AgdFactors.of(supernet.space)
        spec, net = supernet.space.spec, supernet.net
        for module in net.modules():  # every elastic layer at full width; the masks choose
            if hasattr(module, "active_out"):
                module.active_out = None
        self.trunk_channels = supernet.widest.trunk
        self.cells: list[MixedCell] = [m for m in net.trunk]
        for name in SAMPLING_SITES:
            channels = [c * spec.widths[name].scale for c in f.sites[name]]
            self.register_buffer(f"prefix_{name}", _prefixes(channels, max(channels)), persistent=False)
        self.register_buffer("prefix_width", _prefixes(list(f.widths), self.trunk_channels), persistent=False)
        self.masks: dict[str, torch.Tensor] = {}
        self.handles = []
        for part, key in (("stem", "stem"), ("down1", "down1"), ("down2", "cur0"), ("up1", "up1"), ("up2", "up2")):
            for module in getattr(net, part).modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, *NORMS)):
                    self._mask_after(module, key)
        for layer, cell in enumerate(self.cells):
            for op in cell.ops.values():
                current = f"cur{layer}"  # a dense conv switches between the trunk's width and the layer's
                for module in op.modules():
                    if isinstance(module, nn.Conv2d) and module.groups == 1:
                        current = f"w{layer}" if current == f"cur{layer}" else f"cur{layer}"
                    if isinstance(module, (nn.Conv2d, *NORMS)):
                        self._mask_after(module, current)

    def _mask_after(self, module: nn.Module, key: str) -> None:
        def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
            return out * self.masks[key][: out.shape[1]].view(1, -1, 1, 1).to(out.dtype)
        self.handles.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def forward(self, x: torch.Tensor, choice: Choice) -> torch.Tensor:
        net, f = self.supernet.net, self.factors
        masks = {name: choice.sites[name].to(x.dtype) @ getattr(self, f"prefix_{name}").to(x.dtype)
                 for name in SAMPLING_SITES}
        self.masks = {"stem": masks["stem"], "down1": masks["down1"], "cur0": masks["trunk"], "up1": masks["up1"],
                      "up2": masks["up2"]}
        h, current = net.down2(net.down1(net.stem(x))), masks["trunk"]
        for layer, cell in enumerate(self.cells):
            width = choice.widths[layer].to(x.dtype) @ self.prefix_width.to(x.dtype)
            self.masks[f"cur{layer}"], self.masks[f"w{layer}"] = current, width
            weights = choice.ops[layer].to(x.dtype)
            mixed = 0
            for i, op in enumerate(f.ops):
                if not weights.requires_grad and float(weights[i]) == 0.0:
                    continue  # a one-hot choice runs only its operator
                out = h if op == "skip" else cell.ops[op](h)
                if out.shape[1] < self.trunk_channels:
                    out = F.pad(out, (0, 0, 0, 0, 0, self.trunk_channels - out.shape[1]))
                mixed = mixed + weights[i] * out
            if "conv" in f.ops:
                conv = weights[f.ops.index("conv")]
                current = conv * width + (1 - conv) * current
            h = mixed
        y = net.head(net.up2(net.up1(h)))
        return x + y if net.global_residual else y


def _prefixes(channels: list[int], length: int) -> torch.Tensor:
    """Row k keeps the first ``channels[k]`` of ``length`` channels."""
    return (torch.arange(length).unsqueeze(0) < torch.tensor(channels).unsqueeze(1)).double()


# lambda's range (on MACs / target): updated after every architecture step, an unbounded lambda halves
# to nothing in a long run under the band (1e-26 after 150 steps, measured) and then needs as many
# doublings to act when the argmax network grows over the target
LAMBDA_RANGE = (1e-6, 1e3)


def adapt_lambda(value: float, macs: float, target: float, band: float) -> float:
    """AGD's rule on a hard budget: double when the argmax network is over the target, halve when it is
    under (1 - band) * target, keep it in between; within ``LAMBDA_RANGE``."""
    if macs > target:
        value *= 2.0
    elif macs < (1.0 - band) * target:
        value /= 2.0
    return min(LAMBDA_RANGE[1], max(LAMBDA_RANGE[0], value))


@dataclass(frozen=True)
class AgdOptions:
    supernet: str | None = field(default=None, metadata={"path": True,
        "help": "agd supernet the search starts from (default: the shipped one for --space; 'none': fresh weights)"})
    search_steps: int = field(default=60, metadata={"help": "search steps (one architecture and one weight step each)"})
    finetune_steps: int = field(default=200, metadata={"help": "training steps of each derived student"})
    batch_size: int = field(default=8, metadata={"help": "batch of each search and training step"})
    crop: int = field(default=64, metadata={"help": "crop size (pixels)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the supernet's weights in the search "
                                                      "(AGD: 1e-3; cosine decay)"})
    arch_lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the architecture (AGD: 3e-4)"})
    finetune_lr: float = field(default=4e-4, metadata={"help": "Adam learning rate of the derived student"})
    cost_weight: float = field(default=1e-3, metadata={
        "help": "lambda's start: the weight of relaxed MACs / target in the architecture loss (it then adapts)"})
    band: float = field(default=0.1, metadata={
        "help": "d: lambda halves while the argmax network is under (1 - d) * target"})
    tau: float = field(default=1.0, metadata={"help": "Gumbel-softmax temperature of the width samples"})
    reinit: bool = field(default=False, metadata={
        "help": "train the derived network from scratch (AGD) instead of from its supernet slice"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between a trial's checkpoints"})

    def __post_init__(self) -> None:
        for name in ("lr", "arch_lr", "finetune_lr", "cost_weight", "tau"):
            check_range(self, name, 1e-12, None)
        check_range(self, "band", 0.0, 0.99)
        for name in ("search_steps", "finetune_steps", "batch_size", "crop", "checkpoint_every"):
            check_range(self, name, 1, None)


class ArchitectureSearchObjective(Objective):
    """AGD's search: an architecture step on one half of the training images, then a weight step on the
    other, per step; ``lambda`` adapts to the argmax network's exact MACs."""

    kind = "student"
    label = "agd search"

    def __init__(self, method: AgdMethod, target: float, settings: TrainSettings, device: torch.device) -> None:
        options: AgdOptions = method.options
        self.method, self.options, self.settings, self.target = method, options, settings, float(target)
        self.space, self.device = method.space, device
        self.supernet = method.fresh_supernet().to(device).train()
        self.network = SearchNetwork(self.supernet).to(device)
        self.architecture = Architecture(self.network.factors).to(device)
        self.relaxed = method.relaxed
        self.teacher = method.teacher_module.to(device).eval().requires_grad_(False)
        self.arch_task = method.arch_task
        self.opt_w = torch.optim.Adam(self.supernet.parameters(), lr=settings.lr)
        self.opt_a = torch.optim.Adam([{"params": self.architecture.parameters(),
                                        "lr_scale": options.arch_lr / settings.lr}], lr=options.arch_lr,
                                      betas=ARCH_BETAS)
        self.cost_weight, self.cpu_seconds, self.argmax_macs = options.cost_weight, 0.0, None

    def identity(self) -> dict[str, Any]:
        return {"method": "agd", "phase": "search", "target": self.target, "init": self.method.init,
                "cost_weight": self.options.cost_weight, "band": self.options.band, "tau": self.options.tau}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_w, self.opt_a]

    def relaxed_cost(self, choice: Choice) -> torch.Tensor:
        return self.relaxed(choice.sites, choice.ops, choice.widths)

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> float:
        began = time.process_time()
        s = self.settings
        noise = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
        xa, _ = self.arch_task.batch(seed=s.seed + 1, step=step, batch_size=s.batch_size, crop=s.crop)
        xa = local_slice(xa).to(self.device)  # a data-parallel rank's share, as the loop does with x
        with torch.no_grad():
            ta, tw = self.teacher(xa), self.teacher(x)
        # architecture step (first order: the weights as they are)
        choice = self.architecture.sample(noise, self.options.tau)
        cost = self.relaxed_cost(self.architecture.probabilities()) / self.target
        arch_loss = F.l1_loss(self.network(xa, choice), ta) + self.cost_weight * cost.to(xa.dtype)
        self.opt_a.zero_grad(set_to_none=True)
        self.opt_w.zero_grad(set_to_none=True)
        arch_loss.backward()
        self.opt_a.step()
        self.argmax_macs = self.space.macs(self.architecture.argmax(), convention=self.method.context.macs_convention)
        self.cost_weight = adapt_lambda(self.cost_weight, self.argmax_macs, self.target, self.options.band)
        # weight step on the other half, under a fresh sample of the architecture (no gradient to it)
        with torch.no_grad():
            sampled = self.architecture.sample(noise, self.options.tau)
            sampled = Choice({k: v.detach() for k, v in sampled.sites.items()}, sampled.ops.detach(),
                             sampled.widths.detach())
        loss = F.l1_loss(self.network(x, sampled), tw)
        self.opt_w.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_w.step()
        self.cpu_seconds += time.process_time() - began
        return float(loss.detach())

    def evaluate(self) -> dict[str, Any]:
        return {}

    def shown(self, metrics: dict[str, Any]) -> dict[str, str]:
        return {"argmax": f"{(self.argmax_macs or 0) / 1e9:.3g}G", "lambda": f"{self.cost_weight:.3g}"}

    def state(self) -> dict[str, Any]:
        return {"supernet": self.supernet.net.state_dict(), "architecture": self.architecture.state_dict(),
                "optimizers": {"weights": self.opt_w.state_dict(), "architecture": self.opt_a.state_dict()},
                "cost_weight": self.cost_weight, "cpu_seconds": self.cpu_seconds, "argmax_macs": self.argmax_macs}

    def load_state(self, record: dict[str, Any]) -> None:
        load_weights(self.supernet.net, record["supernet"], source="", what="supernet")
        load_weights(self.architecture, record["architecture"], source="", what="architecture")
        self.opt_w.load_state_dict(record["optimizers"]["weights"])
        self.opt_a.load_state_dict(record["optimizers"]["architecture"])
        self.cost_weight, self.cpu_seconds = record["cost_weight"], record["cpu_seconds"]
        self.argmax_macs = record["argmax_macs"]

    def close(self) -> None:
        self.network.remove()

    # ------------------------------------------------------------------------------ derive and project

    def derive(self) -> tuple[Config, int, bool]:
        """The argmax config, shrunk greedily to the target when over it: (config, argmax MACs, projected)."""
        config = self.architecture.argmax()
        macs = self.space.macs(config, convention=self.method.context.macs_convention)
        if macs <= self.target:
            return config, macs, False
        return self.project(config), macs, True

    @torch.no_grad()
    def project(self, config: Config) -> Config:
        """Shrink ``config`` until it fits the target: each move (one site or layer one width narrower, or a
        layer to ``skip``) is scored by MACs saved per unit of L1 to the teacher lost on a fixed batch of
        the architecture half, with the supernet's weights."""
        convention, f = self.method.context.macs_convention, self.network.factors
        s = self.settings
        x, _ = self.arch_task.batch(seed=s.seed + 2, step=0, batch_size=s.batch_size, crop=s.crop)
        x = x.to(self.device)
        target_out = self.teacher(x)
        self.network.remove()  # the plain subnets below run without masks

        def loss_of(candidate: Config) -> float:
            return float(F.l1_loss(self.supernet.extract(candidate).eval()(x), target_out))

        macs, loss = self.space.macs(config, convention=convention), loss_of(config)
        while macs > self.target:
            best = None
            for move in _narrower(f, config):
                moved_macs = self.space.macs(move, convention=convention)
                if moved_macs >= macs:
                    continue
                moved_loss = loss_of(move)
                score = (macs - moved_macs) / max(moved_loss - loss, 1e-9)
                if best is None or score > best[0]:
                    best = (score, move, moved_macs, moved_loss)
            if best is None:
                raise UserError(f"agd: no narrower config of space '{self.space.name}' is under the target "
                                f"{self.target / 1e9:.4g}G MACs; raise the budget")
            _, config, macs, loss = best
        return config


def _narrower(f: AgdFactors, config: Config) -> list[Config]:
    """Configs one step cheaper than ``config``: a site or a layer one width narrower, or a layer skipped."""
    sites, ops, widths = f.indices(config)
    moves = []
    for name in SAMPLING_SITES:
        if sites[name] > 0:
            moves.append(f.config({**sites, name: sites[name] - 1}, ops, widths))
    for layer in range(f.layers):
        if f.ops[ops[layer]] == "skip":
            continue
        if widths[layer] > 0:
            moves.append(f.config(sites, ops, [w - 1 if i == layer else w for i, w in enumerate(widths)]))
        if "skip" in f.ops:
            moves.append(f.config(sites, [f.ops.index("skip") if i == layer else o for i, o in enumerate(ops)],
                                  widths))
    return moves


class AgdTrial(SearchThenTrainTrial):
    """The architecture search (``search.pth``), then the derived student's training."""

    def __init__(self, method: AgdMethod, target: float) -> None:
        options, device = method.options, torch.device(method.context.device)
        settings = TrainSettings(steps=options.search_steps, batch_size=options.batch_size, crop=options.crop,
                                 lr=options.lr, seed=method.context.seed, eval_every=options.search_steps,
                                 checkpoint_every=options.checkpoint_every)
        search = Training(ArchitectureSearchObjective(method, target, settings, device), method.weight_task, settings,
                          device, task_spec=method.context.task)
        super().__init__(method, target, search, options.finetune_steps)

    def derive(self) -> TrainingTrial:
        method, objective = self.method, self.search.objective
        options, device = method.options, torch.device(method.context.device)
        config, argmax_macs, projected = objective.derive()
        objective.close()
        if options.reinit:
            torch.manual_seed(method.context.seed)
            student = method.space.build(config)
        else:
            student = objective.supernet.extract(config)
        settings = TrainSettings(steps=options.finetune_steps, batch_size=options.batch_size, crop=options.crop,
                                 lr=options.finetune_lr, seed=method.context.seed, eval_every=options.finetune_steps,
                                 checkpoint_every=options.checkpoint_every)
        identity = {"method": "agd", "phase": "train", "target": self.target, "init": method.init,
                    "reinit": options.reinit}
        trainer = PrunedStudentObjective(method.space, config, student, method.teacher_module, settings, device,
                                         distill=None, distill_weight=0.0, identity=identity, to_teacher=True)
        training = Training(trainer, method.task, settings, device, task_spec=method.context.task)
        extra = {"target": self.target, "init": "scratch" if options.reinit else method.init,
                 "projected": projected, "argmax_macs": argmax_macs, "lambda": objective.cost_weight,
                 "search_cpu_s": round(objective.cpu_seconds, 1)}
        return TrainingTrial(method, config, training, extra)


class AgdMethod(TargetMethod):
    """AutoGAN-Distiller's differentiable operator and width search, one trial per sampled MACs target."""

    name = "agd"
    Options = AgdOptions
    export_keys = ("target", "projected", "argmax_macs", "search_cpu_s", "steps")

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        self._space, self._supernet_state, self.init = starting_point(self.options.supernet, context)
        if self._space.family != "agd":
            raise UserError(f"--method agd searches agd spaces (operators and widths per layer); space "
                            f"'{self._space.name}' is of the {self._space.family} family: use --space agd")
        task = load_task(context.task)
        check_crop(task, self.options.crop)
        self.weight_indices, self.arch_indices = split_by_image(task.train, context.seed)
        self.relaxed = RelaxedMacs(self._space, context.macs_convention)

    def notes(self) -> list[str]:
        return inherited_space_note(self._space, self.options.supernet, self.context) if self.init == "supernet" else []

    @classmethod
    def fill_defaults(cls, options: AgdOptions, task: str, space: str, shipped: dict[str, Any] | None,
                      weights_dir: Path) -> AgdOptions:
        return with_shipped_supernet(options, space, shipped, weights_dir)

    def load(self) -> None:
        super().load()
        self.weight_task = sub_task(self.task, self.weight_indices)
        self.arch_task = sub_task(self.task, self.arch_indices)

    def fresh_supernet(self) -> Supernet:
        """The supernet a trial starts from: the given one's weights, or fresh ones (seeded)."""
        torch.manual_seed(self.context.seed)
        supernet = Supernet(self._space)
        if self._supernet_state is not None:
            supernet.net.load_state_dict(self._supernet_state)
        return supernet

    def trial(self, target: float) -> AgdTrial:
        return AgdTrial(self, target)

