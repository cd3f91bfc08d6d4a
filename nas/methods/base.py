"""The interface every search method implements, and what a trial produces.

Where each call runs:

- on the **driver** (``nas.search``): ``Method(context, options)``, ``space``, ``parameters``,
  ``first_params``, ``bound`` (the budget gate before a trial, when the cost is known before any
  work), ``describe``, ``load_reference`` / ``judge`` and ``export`` (the best candidate, after
  the trials);
- on a **worker** (a Tune trial, or ``nas.train student`` alone): ``load`` (once per worker), then
  ``start(params)`` gives a ``Trial`` whose ``step`` runs until it returns a ``Candidate``;
  ``save`` / ``restore`` give a trial that trains its checkpoints, so that a retry, a lost node or
  a resumed search continues it instead of starting over.

A ``Candidate`` is what a trial produced (config, exact cost, quality, latency, weights): the row of
``trials.csv``, the Pareto front and the exported student come from it. Nothing here imports Ray,
Optuna, fvcore, torchprofile or plotly.
"""

from __future__ import annotations

import math
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from evaluators.fid import MIN_IMAGES
from evaluators.quality import Quality, evaluate_on, reference
from nas.checkpoint import load_generator, read_training_record, save_generator
from nas.data import load_task
from spaces.errors import UserError
from spaces.modules import Cost
from spaces.space import Choice, Config, SearchSpace, load_space

if TYPE_CHECKING:
    from evaluators.fid import FidJudge, RealFeatures


@dataclass(frozen=True)
class Categorical:
    """A sampled parameter with fixed choices."""

    choices: tuple[Choice, ...]


@dataclass(frozen=True)
class LogUniform:
    """A sampled float, log-uniform in [low, high]."""

    low: float
    high: float


Param = Categorical | LogUniform


@dataclass(frozen=True)
class SearchContext:
    """What a worker needs, as paths and numbers (weights are loaded on the worker, once)."""

    method: str
    task: str
    teacher: str
    space: str  # a name (spaces/<task>/NAME.yaml on the embedded default) or a YAML path
    budget: int
    seed: int = 0
    latency_resolution: int = 256
    latency_repeats: int = 3
    device: str = "cpu"
    macs_convention: str = "torchprofile"
    options: Any = None  # the method's Options
    quality: str = "psnr"  # what a trial's quality is: psnr (against ground truth, else the teacher) | fid
    fid_weights: str | None = None  # the FID Inception's weights (None: the torch hub cache, fetched once)
    fid_min_images: int = MIN_IMAGES  # FID on fewer real or generated images is refused
    # The real images' Inception features, computed once by the driver (workers on other nodes cannot read
    # the run folder); None: computed where needed.
    fid_real: RealFeatures | None = None


@dataclass(frozen=True)
class Candidate:
    """What a trial produced. ``weights`` names the student's file in the trial's last checkpoint
    (None where the student is derived from the config alone, as a supernet's subnet is)."""

    config: str
    cost: Cost
    quality: Quality
    latency_ms: float | None
    weights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific facts (e.g. kd's factor)

    def result(self) -> dict[str, Any]:
        """The candidate as a flat Tune result (what the driver turns into a row)."""
        # ("config" is taken: Tune puts the trial's parameters there)
        return {"architecture": self.config, "macs_torchprofile": self.cost.torchprofile, "macs_fvcore": self.cost.fvcore,
                "params": self.cost.params, "quality": self.quality.score, "quality_metric": self.quality.metric,
                **self.quality.as_dict(), "latency_ms": self.latency_ms, "weights": self.weights,
                **{f"extra_{k}": v for k, v in self.extra.items()}}


@dataclass(frozen=True)
class Failed:
    """A trial that ended without a candidate for a reason a retry would not change (dmask's masks never
    brought the network under its target): an error row that says why."""

    message: str


class Trial(ABC):
    """One trial on a worker: ``step`` until it returns a Candidate."""

    @abstractmethod
    def step(self) -> dict[str, Any] | Candidate | Failed:
        """Advance; a dict reports progress (``step``, ``steps``, ``loss``), a Candidate or a Failed ends
        the trial."""

    @property
    def steps_done(self) -> int:
        """Training steps behind this trial so far (0 for a trial that does not train)."""
        return 0

    @property
    def steps_total(self) -> int:
        """Training steps of the whole trial (0 for a trial that does not train)."""
        return 0

    def save(self, folder: Path) -> None:
        """Write what ``restore`` needs into ``folder`` (a cheap trial keeps nothing)."""

    def restore(self, folder: Path) -> None:
        """Continue from what ``save`` wrote."""


STUDENT_FILE = "student.pth"
CHECKPOINT_FILE = "checkpoint.pth"


class TrainingTrial(Trial):
    """A trial that trains one student of ``config`` through ``training`` (its objective's ``student``),
    ``checkpoint_every`` steps per step of the trial, then judges it once on the val split."""

    def __init__(self, method: Method, config: Config, training: Any, extra: dict[str, Any]) -> None:
        self.method, self.config, self.training, self.extra = method, config, training, dict(extra)
        self.candidate: Candidate | None = None

    @property
    def steps_done(self) -> int:
        return self.training.step

    @property
    def steps_total(self) -> int:
        return self.training.settings.steps

    @property
    def student(self) -> torch.nn.Module:
        return self.training.objective.student

    def step(self) -> dict[str, Any] | Candidate:
        t = self.training
        if not t.done:
            t.advance(t.step + t.settings.checkpoint_every, evaluate=False)
            return {"step": t.step, "steps": t.settings.steps, "loss": t.loss}
        # judged in a step of its own: the trained student is saved first, and a data-parallel run's
        # ranks other than 0 stop before it
        student, method = self.student.eval(), self.method
        self.candidate = Candidate(config=method.space.encode(self.config), cost=method.space.cost(self.config),
                                   quality=method.judge(student), latency_ms=method.latency(student),
                                   weights=STUDENT_FILE, extra={**self.extra, "steps": t.step})
        return self.candidate

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.training.save(folder / CHECKPOINT_FILE)
        if self.training.done:
            save_generator(folder / STUDENT_FILE, self.student, self.method.space, self.config,
                           method=self.method.name, task=self.method.context.task, steps=self.training.step,
                           **self.extra)

    def restore(self, folder: Path) -> None:
        record = read_training_record(folder / CHECKPOINT_FILE, kind="student")
        self.training.restore(record, source=str(folder / CHECKPOINT_FILE))


SEARCH_FILE = "search.pth"


class SearchThenTrainTrial(Trial):
    """A search (its own ``Training``, checkpointed as ``search.pth``) that derives a config, then the
    derived student's training (a ``TrainingTrial``, checkpointed as ``checkpoint.pth``): dmask, agd."""

    def __init__(self, method: Method, target: float, search: Any, finetune_steps: int) -> None:
        self.method, self.target, self.search, self.finetune_steps = method, float(target), search, finetune_steps
        self.finetune: TrainingTrial | None = None
        self._cpu_began = time.process_time()  # the search's CPU cost is reported with the student

    @property
    def objective(self) -> Any:
        return self.search.objective

    @property
    def steps_done(self) -> int:
        return self.search.step + (self.finetune.steps_done if self.finetune else 0)

    @property
    def steps_total(self) -> int:
        return self.search.settings.steps + self.finetune_steps

    def failure(self) -> Failed | None:
        """Checked after each chunk of the search: a reason to end the trial without a student."""
        return None

    @abstractmethod
    def derive(self) -> TrainingTrial:
        """The derived student's training, once the search is done."""

    def step(self) -> dict[str, Any] | Candidate | Failed:
        s = self.search
        if not s.done:
            s.advance(s.step + s.settings.checkpoint_every, evaluate=False)
            failed = self.failure()
            if failed is not None:
                return failed
            if not s.done:
                return {"step": self.steps_done, "steps": self.steps_total, "loss": s.loss}
        if self.finetune is None:
            self.finetune = self.derive()
            # (a method may know it better: agd counts its search steps alone)
            self.finetune.extra.setdefault("search_cpu_s", round(time.process_time() - self._cpu_began, 1))
        out = self.finetune.step()
        if isinstance(out, dict):
            return {**out, "step": self.steps_done, "steps": self.steps_total}
        return out

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.search.save(folder / SEARCH_FILE)
        if self.finetune is not None:
            self.finetune.save(folder)

    def restore(self, folder: Path) -> None:
        path = folder / SEARCH_FILE
        self.search.restore(read_training_record(path, kind="student"), source=str(path))
        if (folder / CHECKPOINT_FILE).is_file():
            self.finetune = self.derive()
            self.finetune.restore(folder)


def target_range(space: SearchSpace, budget: float, convention: str) -> tuple[float, float]:
    """Where a method that trains to a MACs target samples it, log-uniformly: [max(budget / 8, the
    space's smallest config), budget]."""
    smallest = space.macs(space.min_config(), convention=convention)
    return min(budget, max(budget / 8, smallest)), float(budget)


def check_range(options: Any, name: str, low: float | None = None, high: float | None = None) -> None:
    """Options validation in one line: ``name`` is a finite number within [low, high]."""
    value, flag = getattr(options, name), "--" + name.replace("_", "-")
    if not math.isfinite(float(value)):
        raise UserError(f"{flag} must be a finite number, got {value}")
    if low is not None and high is not None and not low <= value <= high:
        raise UserError(f"{flag} must be in [{low:g}, {high:g}], got {value}")
    if low is not None and value < low:
        raise UserError(f"{flag} must be at least {low:g}, got {value}")
    if high is not None and value > high:
        raise UserError(f"{flag} must be at most {high:g}, got {value}")


class Method(ABC):
    """One search method. ``Options`` is its typed options dataclass (its command-line flags)."""

    name: ClassVar[str]
    Options: ClassVar[type]
    # Trials that train are checkpointed and continued from their checkpoint when retried; cheap
    # ones are replaced by a new sample when lost.
    trains: ClassVar[bool] = False
    # Which commands run it: "search" (nas.search) and/or "student" (nas.train student, one trial).
    commands: ClassVar[tuple[str, ...]] = ("search",)
    default_trials: ClassVar[int] = 40

    def __init__(self, context: SearchContext) -> None:
        self.context = context
        self.options = context.options if context.options is not None else self.Options()

    @classmethod
    def fill_defaults(cls, options: Any, task: str, space: str, shipped: dict[str, Any] | None,
                      weights_dir: Path) -> Any:
        """Options with the shipped weights filled in where the user gave none (embedded default)."""
        return options

    @property
    @abstractmethod
    def space(self) -> SearchSpace:
        """The space whose MACs the budget applies to."""

    @abstractmethod
    def parameters(self) -> dict[str, Param]:
        """Name -> distribution of every sampled parameter, in a fixed order."""

    def first_params(self) -> list[dict[str, Any]]:
        """Parameter sets to evaluate before any sample (e.g. a training method's target = the budget)."""
        return []

    def bound(self, params: dict[str, Any]) -> Cost | None:
        """The candidate's cost before any work, when it is known then; None when training decides it."""
        return None

    def repair(self, params: dict[str, Any], budget: int, rng: random.Random) -> dict[str, Any]:
        """``params`` changed so that ``bound`` fits ``budget`` (methods with a bound only)."""
        raise NotImplementedError(f"{self.name} gives no cost bound, so nothing is repaired")

    def describe(self, params: dict[str, Any]) -> str:
        """A short text for progress and logs."""
        return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())

    def notes(self) -> list[str]:
        """What a user should know of how this run judges its candidates (printed when it starts, in run.json)."""
        return []

    def load(self) -> None:
        """Load what trials need (weights, validation data); called once per worker."""
        self.load_reference(self.context.device)

    def load_reference(self, device: str, *, teacher: torch.nn.Module | None = None, teacher_fid: bool = False
                       ) -> None:
        """The val split and the teacher's reference on it, on ``device``; with ``--quality fid`` the FID judge
        too (and, with ``teacher_fid``, the teacher's own FID: the driver's reference point)."""
        task = load_task(self.context.task)
        self.val = task.eval_set("val")
        self.teacher_module = teacher if teacher is not None else load_generator(self.context.teacher).module
        fid = fid_judge(self.context, task, device) if self.context.quality == "fid" else None
        self.reference = reference(self.teacher_module, self.val, device, fid=fid, teacher_fid=teacher_fid)
        self._judge_device = device

    def judge(self, module: torch.nn.Module) -> Quality:
        """Quality of a student on the val split, against the teacher's reference (after ``load_reference``)."""
        return evaluate_on(module, self.val, self.reference, device=self._judge_device)

    def latency(self, module: torch.nn.Module) -> float:
        from evaluators.latency import median_latency_ms

        return median_latency_ms(module, self.space.spec.in_channels, self.context.latency_resolution,
                                 self.context.latency_repeats, self.context.device)

    @abstractmethod
    def start(self, params: dict[str, Any]) -> Trial:
        """A trial for ``params`` (after ``load``)."""

    @abstractmethod
    def export(self, row: dict[str, Any], weights: Path | None, out: Path, *, device: str = "cpu",
               progress: bool = False) -> dict[str, Any]:
        """Write the candidate of ``row`` (its student in ``weights``, fetched from the trial's
        checkpoint) as a standalone student (nas.export's forms) to ``out``."""

    def probe_student(self, row: dict[str, Any], weights: Path | None) -> torch.nn.Module | None:
        """The candidate of ``row`` as a module to draw its pictures with (on the driver, on the CPU): its
        trial's student; None where the trial left none."""
        from nas.checkpoint import load_generator

        return load_generator(weights).module if weights is not None else None


class TargetMethod(Method):
    """A method that trains one student per trial to a MACs target (kd, prune, dmask, agd): the target is
    sampled log-uniformly in ``target_range``, the first trial's is the budget (so ``--trials 1``, and
    ``nas.train student``, give one student at the budget), and the student is exported as trained."""

    trains = True
    commands = ("search", "student")
    default_trials = 4
    export_keys: ClassVar[tuple[str, ...]] = ("target", "steps")  # facts of the student's record kept in its export
    _space: SearchSpace

    @property
    def space(self) -> SearchSpace:
        return self._space

    def parameters(self) -> dict[str, Param]:
        return {"target": LogUniform(*target_range(self._space, self.context.budget, self.context.macs_convention))}

    def first_params(self) -> list[dict[str, Any]]:
        return [{"target": float(self.context.budget)}]

    def describe(self, params: dict[str, Any]) -> str:
        return f"target {float(params['target']) / 1e9:.4g}G"

    def load(self) -> None:
        super().load()
        self.task = load_task(self.context.task)

    def start(self, params: dict[str, Any]) -> Trial:
        if not hasattr(self, "task"):
            self.load()
        return self.trial(float(params["target"]))

    @abstractmethod
    def trial(self, target: float) -> Trial:
        """A trial that trains a student of at most ``target`` MACs (after ``load``)."""

    def export(self, row: dict[str, Any], weights: Path | None, out: Path, *, device: str = "cpu",
               progress: bool = False) -> dict[str, Any]:
        from nas.export import export_trained

        return export_trained(row, weights, out, task=self.context.task, method=self.name,
                              teacher=self.context.teacher, keys=self.export_keys)


QUALITIES = ("psnr", "fid")


def fid_judge(context: SearchContext, task: Any, device: str) -> FidJudge:
    """The FID judge of a search: the FID Inception (``context.fid_weights``) and the real images' features,
    the context's (computed once by the driver) or, outside a search, computed here from the task."""
    from evaluators.fid import FidJudge, inception, real_features

    extractor = inception(context.fid_weights, device)
    real = context.fid_real
    if real is None:
        images = task.real_images("val")
        real = real_features(extractor, images.images, source=images.source, min_images=context.fid_min_images)
    return FidJudge(extractor, real, context.fid_min_images)


def absolute_paths(options: Any) -> Any:
    """``options`` with every file option (a field whose metadata has ``path``) made absolute: trials run
    in other folders, and on other nodes."""
    changes = {f.name: str(Path(value).resolve()) for f in fields(options)
               if f.metadata.get("path") and (value := getattr(options, f.name)) and value != "none"}
    return replace(options, **changes)


def with_shipped_supernet(options: Any, space: str, shipped: dict[str, Any] | None, weights_dir: Path) -> Any:
    """``options`` whose ``supernet`` is the shipped one for ``space`` (a space named as on the embedded
    default; a path has none) where the user gave none."""
    key = f"supernet_{space}"
    if options.supernet or shipped is None or key not in shipped:
        return options
    return replace(options, supernet=str(weights_dir / shipped[key]["file"]))


def starting_point(supernet: str | None, context: SearchContext) -> tuple[SearchSpace, dict[str, Any] | None, str]:
    """What a method's network starts from: the space and weights of the supernet at ``supernet``
    (init "supernet"), or, where it is empty or 'none', the context's space and no weights ("scratch")."""
    from nas.checkpoint import load_supernet

    if supernet and supernet != "none":
        if not Path(supernet).is_file():
            raise UserError(f"--supernet {supernet} not found")
        loaded, _ = load_supernet(supernet)
        return loaded.space, loaded.net.state_dict(), "supernet"
    return resolve_space(context.space, context.task), None, "scratch"


def inherited_space_note(space: SearchSpace, supernet: str, context: SearchContext) -> list[str]:
    """Where a supernet decides the space: a note saying so when ``--space`` names another one."""
    try:
        asked = resolve_space(context.space, context.task)
    except UserError:
        asked = None
    if asked is not None and asked.spec_text == space.spec_text:
        return []
    return [f"the space is '{space.name}', that of {supernet}; --space {context.space} is not used"]


def resolve_space(name: str, task: str) -> SearchSpace:
    """``--space NAME`` on the embedded default is ``spaces/<task>/NAME.yaml``; a path works as it is."""
    from spaces.space import BUILTIN_DIR, builtin_spaces

    if Path(name).suffix in (".yaml", ".yml") or "/" in name:
        if not Path(name).is_file():
            raise UserError(f"space file {name} not found")
        return load_space(name)
    task_space = BUILTIN_DIR / task / f"{name}.yaml"
    if "/" not in task and task_space.is_file():
        return load_space(task_space)
    if name in builtin_spaces():
        return load_space(name)
    raise UserError(f"unknown space {name!r}; give one of {', '.join(builtin_spaces())} or the path of a space "
                    "YAML file")
