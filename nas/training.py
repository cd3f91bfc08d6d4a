"""The one training loop: an objective, a task and typed settings; exact resume, evaluation and
checkpoint cadence.

Teachers, supernets, fine-tunes and every method's student train through ``Training``. What a run
optimises is its ``Objective`` (the losses, the modules and optimizers a checkpoint holds); the
loop owns everything else. A step's batch and every random choice are pure functions of
(seed, step), and the learning rate is a function of the step, so a run restored from its
checkpoint continues exactly as if it had not stopped: that is what ``--resume``, a Tune trial's
retry and a lost node's replacement all rely on.

This module imports neither Ray, Optuna, fvcore, torchprofile nor plotly: a trial runs where they
are not installed.
"""

from __future__ import annotations

import contextlib
import math
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from nas.checkpoint import TRAIN_FORMAT, atomic_save, read_training_record
from nas.data import Task, check_crop
from nas.discriminator import lsgan_loss
from nas.distributed import data_parallel, local_slice, world
from spaces.errors import UserError


MAX_BATCH, MAX_CROP = 4096, 4096


@dataclass(frozen=True)
class TrainSettings:
    """The schedule every training shares (the flags of ``nas.train``)."""

    steps: int
    batch_size: int = 16
    crop: int = 64
    lr: float = 4e-4
    seed: int = 0
    eval_every: int = 500
    checkpoint_every: int = 500
    gan_weight: float = 0.0
    ndf: int = 32
    amp: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "crop", "eval_every", "checkpoint_every", "ndf"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name, most in (("batch_size", MAX_BATCH), ("crop", MAX_CROP), ("ndf", 4096)):
            if getattr(self, name) > most:  # what one step asks of memory stays within reach of a real GPU
                raise UserError(f"--{name.replace('_', '-')} must be at most {most}, got {getattr(self, name)}")
        for name in ("lr", "gan_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise UserError(f"--{name.replace('_', '-')} must be a {'positive' if name == 'lr' else 'non-negative'}"
                                f" number, got {value}")

    # What must be equal for a checkpoint to continue under these settings (the data and its order).
    RESUME_KEYS: ClassVar[tuple[str, ...]] = ("seed", "batch_size", "crop")


# Training batches on which an extracted subnet's batch norms re-estimate their statistics (once-for-all
# uses a few thousand images; 8 batches of 16 crops are 128 here).
CALIBRATION_BATCHES = 8


def calibration_batches(task: Task, *, crop: int, device: torch.device | str, batch_size: int = 16,
                        seed: int = 0) -> list[torch.Tensor]:
    """Fixed training inputs (the same for every subnet, so results are deterministic) for
    ``Supernet.extract(..., calibration=...)``."""
    return [task.batch(seed=seed, step=i, batch_size=batch_size, crop=crop)[0].to(device)
            for i in range(CALIBRATION_BATCHES)]


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when asked (the convs dominate and tolerate it); nothing on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def adam(params, lr: float, adversarial: bool) -> torch.optim.Adam:
    # pix2pix's betas for adversarial training; the usual ones for plain regression
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999) if adversarial else (0.9, 0.999))


def cosine_lr(base: float, step: int, steps: int) -> float:
    """Cosine decay to zero over the run; a function of the step alone, so resuming keeps the schedule."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / max(1, steps)))


def discriminator_step(d: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss = 0.5 * (lsgan_loss(d(real), True) + lsgan_loss(d(fake.detach()), False))
    loss.backward()
    opt.step()
    return float(loss.detach())


def with_gan(loss: torch.Tensor, disc: nn.Module | None, out: torch.Tensor, weight: float) -> torch.Tensor:
    """``loss`` plus the generator's LSGAN term when there is a discriminator."""
    return loss if disc is None else loss + weight * lsgan_loss(disc(out), True)


def optimize(loss: torch.Tensor, opt_g: torch.optim.Optimizer, disc: nn.Module | None,
             opt_d: torch.optim.Optimizer | None, real: torch.Tensor, fake: torch.Tensor) -> None:
    """One generator step, then (with a GAN loss) one discriminator step on the same images."""
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    if disc is not None:
        discriminator_step(disc, opt_d, real, fake)


class Objective(ABC):
    """What a training optimises. The loop calls ``train_step`` once per step, ``evaluate`` on its
    cadence, and ``state`` / ``load_state`` for checkpoints."""

    # What the sides of a training crop must be multiples of: the trained generator's total down-sampling.
    multiple: int = 4

    kind: ClassVar[str]  # the checkpoint record's kind (teacher, supernet, student)
    label: str = "train"  # the progress bar's

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be continued by this objective (space, config, teacher,
        method options), as plain values; stored in the record's ``args``."""

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer whose learning rate follows the schedule."""

    @abstractmethod
    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> float:
        """One optimisation step on a batch; returns the generator's loss."""

    @abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """Validation metrics (merged into the record's ``metrics``)."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """The record's objective-specific entries (weights, optimizer states)."""

    @abstractmethod
    def load_state(self, record: dict[str, Any]) -> None:
        """Restore what ``state`` wrote."""

    def shown(self, metrics: dict[str, Any]) -> dict[str, str]:
        """Extra fields of the progress bar."""
        return {}

    def close(self) -> None:
        """Release hooks and the like once training is over."""


class Training:
    """An objective trained on a task under settings; steps advance in any chunks, with exact resume."""

    def __init__(self, objective: Objective, task: Task, settings: TrainSettings, device: torch.device, *,
                 task_spec: str, extra: dict[str, Any] | None = None) -> None:
        check_crop(task, settings.crop)
        multiple = getattr(objective, "multiple", 4)  # what the generator's input sides must be multiples of
        if settings.crop % multiple:
            raise UserError(f"--crop {settings.crop} is not a multiple of {multiple}: the generator down-samples "
                            f"{multiple.bit_length() - 1} times (a U-Net's input must be a multiple of 2^num_downs); "
                            f"use --crop {max(multiple, settings.crop - settings.crop % multiple)}")
        self.objective, self.task, self.settings, self.device = objective, task, settings, torch.device(device)
        self.task_spec = task_spec
        self.extra = dict(extra or {})  # recorded in args, not checked on resume (out, device, ...)
        self.step, self.train_seconds = 0, 0.0
        self.metrics: dict[str, Any] = {}
        self.loss: float | None = None
        # (rank, ranks): which equal slice of each global batch this process trains on; inside a process
        # group (a Ray Train worker) the objective is made data-parallel before its first step
        self.shard = world()
        self._synced = False  # whether the ranks' objectives were made one (a no-op outside a group)

    @property
    def done(self) -> bool:
        return self.step >= self.settings.steps

    def args(self) -> dict[str, Any]:
        """The record's ``args``: settings, the objective's identity, the task (names as the CLI's flags)."""
        return {**self.objective.identity(), "task": self.task_spec, **asdict(self.settings), **self.extra}

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This process's slice of the global batch of ``step`` (all of it on one process)."""
        s = self.settings
        x, y = self.task.batch(seed=s.seed, step=step, batch_size=s.batch_size, crop=s.crop)
        x, y = local_slice(x, self.shard), (local_slice(y, self.shard) if y is not None else None)
        return x.to(self.device), (y.to(self.device) if y is not None else None)

    def advance(self, until: int, *, on_checkpoint: Callable[[Training], None] | None = None,
                bar=None, evaluate: bool = True) -> None:
        """Train up to step ``until`` (at most ``settings.steps``); evaluate every ``eval_every`` steps
        and at the end, and call ``on_checkpoint`` every ``checkpoint_every`` steps and at ``until``."""
        s = self.settings
        until = min(until, s.steps)
        if not self._synced:  # after any restore: rank 0's state is broadcast to the others
            data_parallel(self.objective, self.device)
            self._synced = True
        while self.step < until:
            began = time.perf_counter()
            lr = cosine_lr(s.lr, self.step, s.steps)
            for opt in self.objective.optimizers():
                for group in opt.param_groups:  # a group may run at a multiple of the schedule (dmask's masks)
                    group["lr"] = lr * group.get("lr_scale", 1.0)
            x, y = self.batch(self.step)
            with autocast(self.device, s.amp):
                self.loss = self.objective.train_step(self.step, x, y)
            self.train_seconds += time.perf_counter() - began
            self.step += 1
            if evaluate and (self.step % s.eval_every == 0 or self.step == s.steps):
                self.metrics.update(self.objective.evaluate(), step=self.step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{self.loss:.4f}", **self.objective.shown(self.metrics))
            if on_checkpoint is not None and (self.step % s.checkpoint_every == 0 or self.step == until):
                on_checkpoint(self)
        if self.done:
            self.objective.close()

    def record(self) -> dict[str, Any]:
        return {"format": TRAIN_FORMAT, "kind": self.objective.kind, "step": self.step,
                "train_seconds": self.train_seconds, "args": self.args(), "metrics": dict(self.metrics),
                "task": self.task_spec, **self.objective.state()}

    def save(self, path: str | Path) -> None:
        """The one place a checkpoint is written (a data-parallel run lets rank 0 own it)."""
        atomic_save(self.record(), path)

    def restore(self, record: dict[str, Any], *, source: str = "checkpoint") -> None:
        """Continue from ``record`` (a checkpoint of the same objective, task and data settings)."""
        self.check_resumable(record, source)
        try:
            self.objective.load_state(record)
        except UserError as exc:
            raise UserError(f"--resume: {source}: {exc}") from None
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            # an optimizer state of other shapes, a missing entry: torch's messages span lines and name no file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"--resume: {source} does not fit this run (damaged, or written by another version): "
                            f"{type(exc).__name__}: {first}") from None
        self.step, self.train_seconds = int(record["step"]), float(record["train_seconds"])
        self.metrics = dict(record.get("metrics") or {})

    def check_resumable(self, record: dict[str, Any], source: str) -> None:
        saved, now = record.get("args", {}), self.args()
        if record.get("kind") != self.objective.kind:
            raise UserError(f"--resume: {source} is a {record.get('kind')} checkpoint, not a {self.objective.kind} one")
        for key in (*TrainSettings.RESUME_KEYS, "task", *self.objective.identity()):
            if key in saved and str(saved[key]) != str(now[key]):
                raise UserError(f"--resume: {source} was trained with --{key.replace('_', '-')} {saved[key]}, "
                                f"not {now[key]}; use the same value or another --out")


def run_to_checkpoint(training: Training, out: Path, *, resume: bool, stop_at: int | None = None,
                      progress: bool = True) -> Path:
    """The command-line run: ``out/checkpoint.pth`` written on the cadence, resumed with ``resume``,
    stopped early (with a checkpoint) at ``stop_at``; returns the checkpoint's path."""
    from tqdm import tqdm

    checkpoint = out / "checkpoint.pth"
    if resume:
        if not checkpoint.is_file():
            raise UserError(f"--resume: no checkpoint at {checkpoint}; start without --resume")
        training.restore(read_training_record(checkpoint), source=str(checkpoint))
    elif checkpoint.exists():
        raise UserError(f"{checkpoint} exists; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    until = min(training.settings.steps, stop_at) if stop_at else training.settings.steps
    bar = tqdm(initial=training.step, total=training.settings.steps, desc=training.objective.label,
               disable=not progress, dynamic_ncols=True)
    training.advance(until, on_checkpoint=lambda t: t.save(checkpoint), bar=bar)
    bar.close()
    if not checkpoint.exists() or training.step == 0:
        training.save(checkpoint)
    return checkpoint


class GeneratorObjective(Objective):
    """An objective over one generator of a space (``generator``, ``opt_g``) and, with a GAN loss, a
    discriminator (``disc``, ``opt_d``): teachers and students checkpoint alike."""

    generator: nn.Module
    disc: nn.Module | None = None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None = None

    def record_meta(self) -> dict[str, Any]:
        """Extra entries of the generator's record (its ``meta``)."""
        return {}

    @property
    def multiple(self) -> int:  # type: ignore[override]
        return getattr(self.generator, "multiple", 4)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.opt_g, self.opt_d) if o is not None]

    def state(self) -> dict[str, Any]:
        from nas.checkpoint import generator_record

        return {
            "generator": generator_record(self.generator, self.space, self.config, **self.record_meta()),
            "discriminator": self.disc.state_dict() if self.disc is not None else None,
            "discriminator_config": self.disc.config if self.disc is not None else None,
            "optimizers": {"generator": self.opt_g.state_dict(),
                           **({"discriminator": self.opt_d.state_dict()} if self.disc is not None else {})},
        }

    def load_state(self, record: dict[str, Any]) -> None:
        from nas.checkpoint import load_weights

        load_weights(self.generator, record["generator"]["state_dict"], source="", what="generator")
        self.opt_g.load_state_dict(record["optimizers"]["generator"])
        if self.disc is not None:
            load_weights(self.disc, record["discriminator"], source="", what="discriminator")
            self.opt_d.load_state_dict(record["optimizers"]["discriminator"])
