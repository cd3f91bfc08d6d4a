"""Search methods behind one small interface; the search driver knows nothing else about them.

A method says which parameters a trial samples, what a parameter set costs (analytically, before
any work), how a worker evaluates it (after loading its resources once), and how to export one.
For ``ofa`` a trial is one subnet of a trained supernet, evaluated with inherited weights; for
methods that train per trial (``dmask``, ``prune``, ``agd``, ``kd``) a trial would be a whole
run at one budget behind the same four calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from evaluators.latency import median_latency_ms
from evaluators.quality import Quality, evaluate_on, reference
from nas.checkpoint import load_generator
from nas.data import load_task
from spaces.errors import UserError
from spaces.modules import Cost
from spaces.space import Choice, SearchSpace


@dataclass(frozen=True)
class SearchContext:
    """What a worker needs, as paths and numbers (weights are loaded on the worker, once)."""

    method: str
    task: str
    teacher: str
    supernet: str | None
    seed: int
    latency_resolution: int = 256
    latency_repeats: int = 3
    device: str = "cpu"
    macs_convention: str = "torchprofile"


class SearchMethod(ABC):
    """One search method. ``params`` are what Optuna samples for a trial."""

    name: ClassVar[str]

    def __init__(self, context: SearchContext) -> None:
        self.context = context

    @property
    @abstractmethod
    def space(self) -> SearchSpace:
        """The space whose MACs the budget applies to."""

    @abstractmethod
    def parameters(self) -> dict[str, tuple[Choice, ...]]:
        """Name -> choices of every sampled parameter, in a fixed order."""

    @abstractmethod
    def cost(self, params: dict[str, Any]) -> Cost:
        """Analytic MACs and params of the candidate ``params`` stand for (no module is built)."""

    @abstractmethod
    def describe(self, params: dict[str, Any]) -> str:
        """The candidate's config string (the ``config`` column)."""

    def load(self) -> None:
        """Load what evaluations need (weights, validation data); called once per worker. Here: the
        val split and the teacher's reference."""
        self.load_reference(self.context.device)

    def load_reference(self, device: str, *, teacher: torch.nn.Module | None = None) -> None:
        """The val split and the teacher's reference on it, on ``device`` (the driver calls this alone,
        before it judges the exported best student)."""
        self.val = load_task(self.context.task).eval_set("val")
        teacher = teacher if teacher is not None else load_generator(self.context.teacher).module
        self.reference = reference(teacher, self.val, device)
        self._judge_device = device

    def judge(self, module: torch.nn.Module) -> Quality:
        """Quality of a student on the val split, against the teacher's reference (after ``load_reference``)."""
        return evaluate_on(module, self.val, self.reference, device=self._judge_device)

    @abstractmethod
    def evaluate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Metrics of one candidate: quality (higher is better), quality_metric (which metric quality is),
        psnr, ssim, fidelity_psnr, share (of the teacher's gain over bicubic), latency_ms."""

    @abstractmethod
    def export(self, params: dict[str, Any], out: Path, *, finetune_steps: int = 0, device: str = "cpu",
               progress: bool = False) -> dict[str, Any]:
        """Write the candidate as a standalone student (nas.export's forms) to ``out``, fine-tuned
        by distillation for ``finetune_steps`` first."""


class OfaMethod(SearchMethod):
    """Subnets of a once-for-all supernet, evaluated with inherited weights on the val split."""

    name = "ofa"

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        if not context.supernet:
            raise UserError("--method ofa needs a trained supernet (--supernet CKPT, from nas.train supernet)")
        from nas.checkpoint import safe_load
        from spaces.schema import parse_space

        record = safe_load(context.supernet)
        if not isinstance(record, dict) or record.get("kind") != "supernet":
            raise UserError(f"{context.supernet} is not a supernet checkpoint of nas.train supernet")
        self._space = SearchSpace(parse_space(record["space_yaml"], file=f"{context.supernet} (embedded space)",
                                              name=record["space_name"]))
        self.supernet = None

    @property
    def space(self) -> SearchSpace:
        return self._space

    def parameters(self) -> dict[str, tuple[Choice, ...]]:
        return {site.name: site.choices for site in self._space.sites}

    def cost(self, params: dict[str, Any]) -> Cost:
        return self._space.cost(self._space.validate(params))

    def describe(self, params: dict[str, Any]) -> str:
        return self._space.encode(params)

    def load(self) -> None:
        from nas.train import load_supernet

        super().load()
        self.supernet, _ = load_supernet(self.context.supernet)
        self.supernet.to(self.context.device)

    def evaluate(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.supernet is None:
            self.load()
        config = self._space.validate(params)
        student = self.supernet.extract(config)
        quality = self.judge(student)
        latency = median_latency_ms(student, self._space.spec.in_channels, self.context.latency_resolution,
                                    self.context.latency_repeats, self.context.device)
        return {"quality": quality.score, "quality_metric": quality.metric, **quality.as_dict(),
                "latency_ms": latency}

    def export(self, params: dict[str, Any], out: Path, *, finetune_steps: int = 0, device: str = "cpu",
               progress: bool = False) -> dict[str, Any]:
        from nas.export import export_subnet

        return export_subnet(self.context.supernet, self._space.validate(params), out, finetune_steps=finetune_steps,
                             task=self.context.task, teacher=self.context.teacher, seed=self.context.seed,
                             device=device, progress=progress)


METHODS: dict[str, type[SearchMethod]] = {"ofa": OfaMethod}
PLANNED = ("dmask", "prune", "agd", "kd")


def get_method(name: str) -> type[SearchMethod]:
    if name in METHODS:
        return METHODS[name]
    if name in PLANNED:
        raise UserError(f"--method {name} is not available yet; available: {', '.join(METHODS)}")
    raise UserError(f"unknown --method {name!r}; available: {', '.join(METHODS)}")
